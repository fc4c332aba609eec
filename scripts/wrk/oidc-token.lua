-- node-oidc-provider's token endpoint: an ES256 JWT access token by client_credentials
-- (bench/oidc-provider/server.mjs; client "bench", secret "bench-secret").
wrk.method = "POST"
wrk.path = "/token"
wrk.headers["Authorization"] = "Basic YmVuY2g6YmVuY2gtc2VjcmV0"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=client_credentials&scope=chat"
