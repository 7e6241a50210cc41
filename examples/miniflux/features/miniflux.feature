Feature: Miniflux
  Miniflux's own gates, with Colorgate's step library only: its health check from
  inside the edge before the switch, and through its REST API after it, as the admin
  its documented compose file creates (the password: COLORGATE_GATE_ADMIN_PASSWORD),
  a category written, read back and removed.

  @pre
  Scenario: The candidate answers its health check
    When the edge requests "/healthcheck" from the miniflux of the color under test
    Then the status is 200
    And the body contains "OK"

  @post
  Scenario: The API knows the admin
    Given the public edge
    And I log in with basic auth as "admin" and the password in COLORGATE_GATE_ADMIN_PASSWORD
    When I send GET "/v1/me"
    Then the status is 200
    And the JSON field "username" is "admin"
    And the JSON field "is_admin" is "true"

  @post
  Scenario: A category written through the API is read back and removed
    Given the public edge
    And I log in with basic auth as "admin" and the password in COLORGATE_GATE_ADMIN_PASSWORD
    When I send POST "/v1/categories" with the JSON body
      """
      {"title": "gate ${run}"}
      """
    Then the status is 201
    And I save the JSON field "id" as "category"
    When I send GET "/v1/categories"
    Then the status is 200
    And the JSON field "[title=gate ${run}].id" is "${category}"
    When I send DELETE "/v1/categories/${category}"
    Then the status is 204
    When I send GET "/v1/categories"
    Then the body contains "All"
