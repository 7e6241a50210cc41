Feature: Upstream active
  The edge routes to the expected color, and live answers come from that color and version.

  @post
  Scenario: The edge's routing state names the expected color and version
    Then the edge routes to the color and version under test

  @post
  Scenario: API answers come from the expected color and version
    Given the public edge
    When I request "/api/version" over HTTPS
    Then the response comes from the color and version under test

  @post
  Scenario: The app is served by the expected color and version
    Given the public edge
    When I request "/" over HTTPS
    Then the response comes from the color and version under test
