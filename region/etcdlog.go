package region

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdLogger routes the logs of etcd (the embedded member and the client,
// which log through zap) into the region's slog logger, from warnings up:
// etcd's info level narrates every raft step.
func etcdLogger(log *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{h: log.With("part", "etcd").Handler(), min: zapcore.WarnLevel})
}

// slogCore is a zapcore.Core that writes to a slog.Handler.
type slogCore struct {
	h   slog.Handler
	min zapcore.Level
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l >= zapcore.WarnLevel:
		return slog.LevelWarn
	case l >= zapcore.InfoLevel:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

// Enabled reports whether entries of level l are written.
func (c *slogCore) Enabled(l zapcore.Level) bool {
	return l >= c.min && c.h.Enabled(context.Background(), slogLevel(l))
}

// With returns a core that adds fields to every entry.
func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{h: c.h.WithAttrs(attrs(fields)), min: c.min}
}

// Check adds the core to an entry it writes.
func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// benign are etcd warnings that say nothing an operator can act on: how
// the region configures its member on purpose (one port for gRPC and
// HTTP, 16 MiB requests for large plans, no etcd auth: mutual TLS admits
// only the region's servers) and its listeners closing at shutdown. They
// are written at debug level.
// A message is benign when its error field (if the entry names one)
// contains the given text.
var benign = []struct{ msg, err string }{
	{"Running http and grpc server on single port", ""},
	{"exceeded recommended request limit", ""},
	{"simple token is not cryptographically signed", ""},
	{"setting up serving from embedded etcd failed", ""},
	{"stopping secure grpc server due to error", ""},
	{"stopped secure grpc server due to error", ""},
	// A new member's first start, before it has a raft term.
	{"Failed to detect schema version", "missing term information"},
	{"failed to update storage version", "missing term information"},
	// The client's retry of a call its caller canceled (at Close).
	{"retrying of unary invoker failed", "context canceled"},
}

// Write hands one entry to the handler.
func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	as := attrs(fields)
	level := slogLevel(e.Level)
	for _, b := range benign {
		if strings.HasPrefix(e.Message, b.msg) && strings.Contains(errorField(as), b.err) {
			level = slog.LevelDebug
		}
	}
	if !c.h.Enabled(context.Background(), level) {
		return nil
	}
	r := slog.NewRecord(e.Time, level, e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(as...)
	return c.h.Handle(context.Background(), r)
}

// Sync has nothing to flush: the handler writes as it goes.
func (c *slogCore) Sync() error { return nil }

// errorField is the text of an entry's "error" field ("" without one).
func errorField(as []slog.Attr) string {
	for _, a := range as {
		if a.Key == "error" {
			return fmt.Sprint(a.Value.Any())
		}
	}
	return ""
}

// attrs converts zap fields with zap's own encoder.
func attrs(fields []zapcore.Field) []slog.Attr {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	out := make([]slog.Attr, 0, len(enc.Fields))
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		out = append(out, slog.Any(k, enc.Fields[k]))
	}
	return out
}
