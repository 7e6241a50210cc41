Feature: Hardening
  The containers run locked down (not as root, no capabilities, no privilege gain,
  read-only root filesystems), nothing but the edge is reachable from the host, no
  container holds a secret in its environment, and the edge sends its security headers.

  @pre @post
  Scenario: The color under test and the edge run locked down
    Given the stack's containers
    Then the color under test and the edge run locked down

  @pre @post
  Scenario: No other container can gain privileges
    Given the stack's containers
    Then no other container can gain privileges
    And only the edge publishes host ports

  # (what a switch cannot change is checked before it, on the candidate)
  @pre
  Scenario: Secrets reach the containers as files
    Given the stack's containers
    Then no container holds a secret in its environment

  @pre
  Scenario: The app reaches its database as its own role
    Given the stack's containers
    Then the color under test reaches the stack's database as its own role, not a superuser

  @pre @post
  Scenario: The edge sends its security headers
    Given the public edge
    When I request "/" over HTTPS
    Then the response carries the edge's security headers
    And the response sets HSTS for at least a year
