package herald

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// TokenClaims describe a user token for MintToken.
type TokenClaims struct {
	// Subject is the user id (claim sub); required.
	Subject string
	// TTL sets exp from Now; 0 means one hour, a negative TTL no exp.
	TTL time.Duration
	// Tenant is the tenant claim; empty leaves it out (the default tenant).
	Tenant string
	// Roles is the roles claim.
	Roles []string
	// Issuer (iss) must equal auth.issuer when the node sets it.
	Issuer string
	// Audience (aud) must contain auth.audience when the node sets it.
	Audience []string
	// NotBefore sets nbf when not zero.
	NotBefore time.Time
	// Claims are extra claims for namespace rules, e.g. {"projects": [7]};
	// they may not set the claims above.
	Claims map[string]any
	// Now is the issue time; zero means time.Now().
	Now time.Time
}

var reservedClaims = []string{"sub", "exp", "iat", "nbf", "iss", "aud", "tenant", "roles"}

// MintToken signs a Herald user token with HS256 and secret (the node's
// auth.hs256_secret), locally.
func MintToken(secret []byte, c TokenClaims) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("herald: MintToken: the secret is empty")
	}
	if c.Subject == "" {
		return "", errors.New("herald: MintToken: Subject is required")
	}
	payload := make(map[string]any, len(c.Claims)+8)
	for _, k := range reservedClaims {
		if _, ok := c.Claims[k]; ok {
			return "", fmt.Errorf("herald: MintToken: Claims may not set %q; use its TokenClaims field", k)
		}
	}
	for k, v := range c.Claims {
		payload[k] = v
	}
	now := c.Now
	if now.IsZero() {
		now = time.Now()
	}
	payload["sub"] = c.Subject
	payload["iat"] = now.Unix()
	switch {
	case c.TTL == 0:
		payload["exp"] = now.Add(time.Hour).Unix()
	case c.TTL > 0:
		payload["exp"] = now.Add(c.TTL).Unix()
	}
	if !c.NotBefore.IsZero() {
		payload["nbf"] = c.NotBefore.Unix()
	}
	if c.Tenant != "" {
		payload["tenant"] = c.Tenant
	}
	if c.Roles != nil {
		payload["roles"] = c.Roles
	}
	if c.Issuer != "" {
		payload["iss"] = c.Issuer
	}
	if len(c.Audience) == 1 {
		payload["aud"] = c.Audience[0]
	} else if len(c.Audience) > 1 {
		payload["aud"] = c.Audience
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return "", fmt.Errorf("herald: MintToken: encoding the claims: %w", err)
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(body)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil)), nil
}
