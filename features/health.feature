Feature: Health
  The color under test answers its health checks, and through the public edge the
  live stack serves the app with its database connected.

  @pre
  Scenario: The candidate backend is healthy with its database connected
    When the edge requests "/api/health" from the backend of the color under test
    Then the JSON field "database" is "ok"
    And the response comes from the color and version under test

  @pre
  Scenario: The candidate frontend serves the single-page app
    When the edge requests "/" from the frontend of the color under test
    Then the response is the single-page app
    And the response comes from the color and version under test

  @pre
  Scenario: The candidate's database migrations are at head
    Then the color under test has no pending database migrations

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
  Scenario: The API answers through the edge with its database connected
    Given the public edge
    When I request "/api/health" over HTTPS
    Then the JSON field "database" is "ok"
