// Package logging builds the process logger: zerolog, JSON by default and
// human-readable on a terminal. Components derive their own logger with
// logger.With().Str("component", name).
package logging

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// Format selects the log encoding.
type Format string

const (
	Auto   Format = "auto" // pretty on a terminal, JSON otherwise
	JSON   Format = "json"
	Pretty Format = "pretty"
)

// New returns a logger writing to w at level ("debug", "info", ...).
func New(w io.Writer, level string, format Format) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log level %q: %w", level, err)
	}
	switch format {
	case Auto:
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
		}
	case Pretty:
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: true}
	case JSON:
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: want auto, json or pretty", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
