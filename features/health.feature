Feature: Health
  The live stack answers through the public edge, over HTTPS, with its database connected.

  @post
  Scenario: The edge serves the single-page app
    Given the public edge
    When I request "/" over HTTPS
    Then the response is the single-page app

  @post
  Scenario: Deep links fall back to the single-page app
    Given the public edge
    When I request "/patients/42" over HTTPS
    Then the response is the single-page app

  @post
  Scenario: The API reports its database connected
    Given the public edge
    When I request "/api/health" over HTTPS
    Then the JSON field "database" is "ok"
    And the response comes from the live color
