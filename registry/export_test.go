package registry

// Test helpers of jwt_test.go for the external registry_test package.
var (
	SignJWT   = sign
	PubPEM    = pubPEM
	JWTClaims = claims
)
