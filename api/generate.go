// Package api is generated from openapi.yaml by oapi-codegen (api.gen.go);
// besides this file it holds no hand-written code. Regenerate with
// `go generate ./api`.
package api

import _ "embed"

//go:generate go tool oapi-codegen -config cfg.yaml openapi.yaml

// Spec is the contract as written, served at /api/openapi.yaml.
//
//go:embed openapi.yaml
var Spec string
