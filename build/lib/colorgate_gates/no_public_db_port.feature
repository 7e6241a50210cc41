Feature: No public database port
  The database and the app's services are reachable only from inside the stack.
  On a Swarm, no node answers on the database port.

  @pre @post
  Scenario: Only the edge publishes host ports
    Given the stack's containers
    Then only the edge publishes host ports

  @pre @post
  Scenario: The database sits on internal networks only
    Given the stack's containers
    Then the database is attached only to internal networks

  @pre @post
  Scenario: Nothing on the host answers on the database port
    Given the stack's containers
    Then nothing on the host listens on the database port
    And no connection to the database port succeeds from the host
