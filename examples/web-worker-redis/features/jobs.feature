Feature: The jobs app
  The example's own gates: the page renders with the jobs from the database.

  @pre
  Scenario: The candidate renders the jobs page
    When the edge requests "/" from the web of the color under test
    Then the status is 200
    And the body contains "<h1>Jobs</h1>"

  @post
  Scenario: The jobs page is served through the edge
    Given the public edge
    When I request "/" over HTTPS
    Then the status is 200
    And the body contains "<h1>Jobs</h1>"
    And the response time is below 2000 ms

  @post
  Scenario: An unknown job is a JSON 404
    Given the public edge
    When I request "/jobs/999999" over HTTPS
    Then the status is 404
    And the JSON field "error" is "no such job"
