Feature: MLflow tracking server
  MLflow's own gates, with Colorgate's step library only: its health check from inside
  the edge before the switch, and through its REST API after it, an experiment created,
  read back by name and deleted (left in MLflow's trash, as its API does).

  @pre
  Scenario: The candidate answers its health check
    When the edge requests "/health" from the mlflow of the color under test
    Then the status is 200
    And the body contains "OK"

  @post
  Scenario: An experiment created through the REST API is read back and deleted
    Given the public edge
    When I send POST "/api/2.0/mlflow/experiments/create" with the JSON body
      """
      {"name": "gate-${run}", "tags": [{"key": "written-by", "value": "colorgate"}]}
      """
    Then the status is 200
    And I save the JSON field "experiment_id" as "experiment"
    When I send GET "/api/2.0/mlflow/experiments/get-by-name?experiment_name=gate-${run}"
    Then the status is 200
    And the JSON field "experiment.experiment_id" is "${experiment}"
    And the JSON field "experiment.lifecycle_stage" is "active"
    And the JSON field "experiment.tags[key=written-by].value" is "colorgate"
    When I send POST "/api/2.0/mlflow/experiments/delete" with the JSON body
      """
      {"experiment_id": "${experiment}"}
      """
    Then the status is 200
    When I send GET "/api/2.0/mlflow/experiments/get?experiment_id=${experiment}"
    Then the JSON field "experiment.lifecycle_stage" is "deleted"
