// Package simulator is the device fleet behind `iotpipe simulate` and the
// project's load generator.
//
// Each Device is one MQTT 3.1.1 connection (client id and username = device
// id, password = token) publishing JSON readings from its Sensor to
// /devices/<id>/events, e.g.
//
//	{"ts":1712000000000,"temperature":21.37,"humidity":48.2}
//
// Run paces the fleet to Config.Rate, keeps up to Config.MaxInflight publishes
// in flight per connection, and measures each one's time to PUBACK:
//
//	rep, err := simulator.Run(ctx, simulator.Config{
//		Broker:   "127.0.0.1:1883",
//		Devices:  []simulator.Device{{ID: "dev-1", Token: token}},
//		Rate:     100, // messages per second, whole fleet
//		Duration: time.Minute,
//		QoS:      1,
//		Progress: os.Stderr,
//	})
//	if err != nil {
//		return err // errors.Is(err, simulator.ErrRefused) for a bad token
//	}
//	rep.WriteTo(os.Stdout)
//
// Payloads are reproducible: a device's readings depend only on its id,
// Config.Seed and the timestamps, so NewSensor(id, seed) replayed over the
// received ts values yields the received readings.
package simulator
