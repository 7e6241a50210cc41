Feature: The static site
  The site's own gates: its pages, and an unknown page is a 404, not a fallback.

  @pre
  Scenario: The candidate serves the home page
    When the edge requests "/" from the site of the color under test
    Then the status is 200
    And the body contains "<h1>Field notes</h1>"

  @post
  Scenario: The pages are served through the edge
    Given the public edge
    When I request "/about/" over HTTPS
    Then the status is 200
    And the body contains "About these notes"
    And the header "content-type" is "text/html"

  @post
  Scenario: An unknown page is not found
    Given the public edge
    When I request "/no/such/page" over HTTPS
    Then the status is 404
