package main

import (
	"github.com/iotpipe/iotpipe/broker"
	"github.com/iotpipe/iotpipe/downlink"
)

// newHub makes this process's end of the downlink and presence topics
// (commands and device presence across instances). newBroker and newAPI pick
// it up from e.hub; it must run until they stopped (its group comes last).
func (e *env) newHub() (*downlink.Hub, error) {
	h, err := downlink.New(downlink.Config{
		Kafka: e.kafka, Topic: e.topics.Downlink, PresenceTopic: e.topics.Presence,
		AckTimeout: e.o.commandTimeout, Logger: e.log, Metrics: e.metrics,
	})
	if err != nil {
		return nil, err
	}
	e.hub = h
	e.closers = append(e.closers, h.Close) // when Run never ran; a no-op after it
	return h, nil
}

// presence is e.hub as the broker's Presence, or nil (not a typed nil).
func (e *env) presence() broker.Presence {
	if e.hub == nil {
		return nil
	}
	return e.hub
}
