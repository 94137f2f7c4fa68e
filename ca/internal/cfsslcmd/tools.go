//go:build tools

// Package cfsslcmd pins the cfssl command, which the tests of package ca
// build and run as a real external CA. The build tag keeps it out of every
// build; it only keeps cfssl's dependencies in go.sum (go mod tidy honours
// it).
package cfsslcmd

import _ "github.com/cloudflare/cfssl/cmd/cfssl"
