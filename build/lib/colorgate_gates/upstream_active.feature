Feature: Upstream active
  The edge routes to the expected color, and live answers on every route come from
  that color's containers, at the expected version.

  @post
  Scenario: The edge's routing state names the expected color and version
    Then the edge routes to the color and version under test

  @post
  Scenario: Every route is answered by the expected color and version
    Given the public edge
    Then every route is answered by the color and version under test
