package ca

import (
	"context"
	"log/slog"

	cfssllog "github.com/cloudflare/cfssl/log"
)

// cfssl logs through its own package to stderr; route it to slog instead,
// with module=ca. Its info lines (one per signed certificate) go to debug:
// callers log issuance themselves, with the node ID.
func init() {
	cfssllog.SetLogger(cfsslSlog{})
}

type cfsslSlog struct{}

func (cfsslSlog) log(level slog.Level, msg string) {
	slog.Default().Log(context.Background(), level, msg, "module", "ca", "component", "cfssl")
}

func (l cfsslSlog) Debug(msg string)   { l.log(slog.LevelDebug, msg) }
func (l cfsslSlog) Info(msg string)    { l.log(slog.LevelDebug, msg) }
func (l cfsslSlog) Warning(msg string) { l.log(slog.LevelWarn, msg) }
func (l cfsslSlog) Err(msg string)     { l.log(slog.LevelError, msg) }
func (l cfsslSlog) Crit(msg string)    { l.log(slog.LevelError, msg) }
func (l cfsslSlog) Emerg(msg string)   { l.log(slog.LevelError, msg) }
