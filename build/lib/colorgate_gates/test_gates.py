"""Collects every *.feature in this directory as gate scenarios (steps: steps/)."""

from pytest_bdd import scenarios

scenarios(".")
