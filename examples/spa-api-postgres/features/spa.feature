Feature: The sample app
  The example's own gates, written with Colorgate's step library: the single-page app
  and its deep links, and the API with its database.

  @pre
  Scenario: The candidate frontend serves the single-page app
    When the edge requests "/" from the frontend of the color under test
    Then the status is 200
    And the body contains "data-app="colorgate-sample""

  @post
  Scenario: The edge serves the single-page app
    Given the public edge
    When I request "/" over HTTPS
    Then the status is 200
    And the body contains "data-app="colorgate-sample""
    And the response time is below 2000 ms

  @post
  Scenario: Deep links fall back to the single-page app
    Given the public edge
    When I request "/patients/42" over HTTPS
    Then the status is 200
    And the body contains "data-app="colorgate-sample""

  @post
  Scenario: The API answers with its database connected
    Given the public edge
    When I request "/api/health" over HTTPS
    Then the status is 200
    And the JSON field "database" is "ok"
    And the header "content-type" is "application/json"
