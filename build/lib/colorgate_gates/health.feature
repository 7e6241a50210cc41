Feature: Health
  The color under test answers the health checks the app declares (x-colorgate.health),
  asked from inside the edge the way nginx will ask; through the public edge the live
  stack answers them too, and none of the candidate's containers is being brought back
  by its restart policy (between crashes it would answer them). On a Swarm, the
  candidate's tasks sit on as many nodes as can take them (one host is one node).

  @pre
  Scenario: Every routed service of the candidate passes its health check
    Then every routed service of the color under test passes its health check

  @pre @post
  Scenario: The candidate is not restarting in a loop
    Then no container of the color under test is restarting in a loop

  @pre
  Scenario: The candidate runs the version under test
    Then the color under test runs the version under test

  @pre
  Scenario: The candidate's tasks are spread over the nodes of a Swarm
    Then each service of the color under test runs on as many nodes as it can

  @pre
  Scenario: The candidate's database migrations are at head
    Then the color under test has no pending database migrations

  @post
  Scenario: The health checks pass through the public edge
    Given the public edge
    Then every health check passes through the public edge
