Feature: No public database port
  PostgreSQL and the backends are reachable only from inside the stack.

  @pre @post
  Scenario: Only the edge publishes host ports
    Given the stack's containers
    Then only the edge publishes host ports

  @pre @post
  Scenario: PostgreSQL sits on internal networks only
    Given the stack's containers
    Then postgres is attached only to internal networks

  @pre @post
  Scenario: Nothing on the host answers on the PostgreSQL port
    Given the stack's containers
    Then nothing on the host listens on port 5432
    And no connection to port 5432 succeeds from the host
