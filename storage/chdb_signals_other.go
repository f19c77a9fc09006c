//go:build !linux || !(amd64 || arm64)

package storage

import "syscall"

// The signal fix-up in chdb_signals_linux.go uses the rt_sigaction layout of
// Linux amd64/arm64, and the chDB library scripts/chdb.sh installs is Linux
// x86_64 only; elsewhere the guard checks and restores nothing.

var chdbGuardedSignals = [...]syscall.Signal{}

type kernelSigaction struct{}

type chdbSignalGuard [len(chdbGuardedSignals)]kernelSigaction

func saveSignals() *chdbSignalGuard { return &chdbSignalGuard{} }

func (*chdbSignalGuard) restore() []syscall.Signal { return nil }
