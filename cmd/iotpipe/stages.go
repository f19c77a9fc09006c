package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
)

// stage is one long-running component.
type stage struct {
	name string
	run  func(ctx context.Context) error
}

// group is a set of stages stopped together; after runs once they all returned.
type group struct {
	stages []stage
	after  func()
}

// runGroups starts every stage and, when ctx ends or any stage fails, stops
// the groups one after another in order. The order carries the shutdown
// contract: the broker stops taking messages before the producer behind it is
// flushed, and storage outlives the processor writing to it.
func runGroups(ctx context.Context, log zerolog.Logger, groups []group) error {
	type result struct {
		name string
		err  error
	}
	failed := make(chan result, 64)
	cancels := make([]context.CancelFunc, len(groups))
	dones := make([][]chan error, len(groups))
	for i, g := range groups {
		gctx, cancel := context.WithCancel(context.Background())
		cancels[i] = cancel
		for _, s := range g.stages {
			done := make(chan error, 1)
			dones[i] = append(dones[i], done)
			go func() {
				err := s.run(gctx)
				if err != nil && !errors.Is(err, context.Canceled) {
					err = fmt.Errorf("%s: %w", s.name, err)
					failed <- result{s.name, err}
				} else {
					err = nil
				}
				done <- err
			}()
		}
	}
	var first error
	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case r := <-failed:
		first = r.err
		log.Error().Err(r.err).Str("stage", r.name).Msg("stage failed; shutting down")
	}
	var errs []error
	if first != nil {
		errs = append(errs, first)
	}
	for i, g := range groups {
		cancels[i]()
		for _, d := range dones[i] {
			if err := <-d; err != nil && err != first {
				errs = append(errs, err)
			}
		}
		if g.after != nil {
			g.after()
		}
	}
	return errors.Join(errs...)
}
