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

  @post
  Scenario: A note written through the API is read back, changed and removed
    Given the public edge
    When I send POST "/api/notes" with the JSON body
      """
      {"body": "written by the gates"}
      """
    Then the status is 201
    And I save the JSON field "id" as "note"
    And the note was made within the last minute
    When I send GET "/api/notes/${note}"
    Then the status is 200
    And the JSON field "body" is "written by the gates"
    And the JSON field "id" is "${note}"
    When I send PUT "/api/notes/${note}" with the JSON body
      """
      {"body": "changed by the gates"}
      """
    Then the JSON field "body" is "changed by the gates"
    When I send DELETE "/api/notes/${note}"
    Then the status is 204
    When I send GET "/api/notes/${note}"
    Then the status is 404
