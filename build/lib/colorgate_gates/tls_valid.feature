Feature: TLS valid
  The edge's certificate is trusted, names the domain, is not about to expire, and
  only modern protocols are offered. Plain HTTP only redirects.

  @post @tls
  Scenario: The certificate chains to the configured CA and names the domain
    Given a TLS handshake with the edge
    Then the certificate chains to the configured CA and matches the domain
    And the certificate is not close to expiry

  @post @tls
  Scenario: Protocols older than TLS 1.2 are refused
    Then a TLS 1.0 handshake is refused
    And a TLS 1.1 handshake is refused

  @post @tls
  Scenario: HTTP redirects to HTTPS and HTTPS sets HSTS
    Given the public edge
    When I request "/" over HTTPS
    Then the response sets HSTS for at least a year
    And HTTP redirects to HTTPS
