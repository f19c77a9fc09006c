//go:build linux && (amd64 || arm64)

package storage

import (
	"syscall"
	"unsafe"
)

// Why this file exists: libchdb is a whole ClickHouse server, and its startup
// (chdb_connect; ClickHouse's BaseDaemon and Poco set-up) installs its own
// process-wide handlers for the fatal signals SIGILL, SIGTRAP, SIGABRT,
// SIGBUS, SIGFPE, SIGSEGV and SIGSYS, replacing the Go runtime's. From then
// on every SIGSEGV in *Go* code, including the nil-pointer dereferences Go
// turns into recoverable panics (fmt recovers them when printing a nil
// Stringer, net/http per request), lands in ClickHouse's crash handler: it
// logs "... fatal error", waits up to minutes for a log flush that never
// comes, then re-raises the signal with the default action. The process dies
// with a bare "Segmentation fault", no Go trace. Its handlers for SIGABRT,
// SIGBUS, SIGFPE, SIGILL and SIGTRAP are also installed without SA_ONSTACK,
// which the Go runtime requires of any handler that may run on a goroutine
// stack.
//
// chdbSignalGuard snapshots the handlers the Go runtime owns before a call
// into libchdb and puts back any that the call replaced. libchdb 26.x takes
// them in chdb_connect only, but every entry point is guarded: the check is
// a few raw syscalls, and other libchdb versions reinstalled them per query.
// Signals the Go runtime leaves at their default (SIGTSTP, SIGRTMIN, which
// ClickHouse uses for its stack-trace collector) stay with libchdb.
//
// Go calls these handlers through the kernel only, so rt_sigaction(2) with the
// kernel's own struct (read back and written verbatim, restorer included)
// restores them exactly.

// chdbGuardedSignals are the signals libchdb is known to take, plus SIGTRAP
// and SIGSYS which ClickHouse's crash handler also covers.
var chdbGuardedSignals = [...]syscall.Signal{
	syscall.SIGILL, syscall.SIGTRAP, syscall.SIGABRT, syscall.SIGBUS,
	syscall.SIGFPE, syscall.SIGSEGV, syscall.SIGSYS,
}

// kernelSigaction is struct sigaction as the Linux rt_sigaction syscall takes
// it on amd64 and arm64 (the platforms libchdb is built for on Linux).
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const (
	sigDFL = 0 // SIG_DFL
	sigIGN = 1 // SIG_IGN
)

type chdbSignalGuard [len(chdbGuardedSignals)]kernelSigaction

func getSigaction(sig syscall.Signal, sa *kernelSigaction) {
	// Cannot fail for a valid signal number and a valid pointer.
	syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(unsafe.Pointer(sa)), unsafe.Sizeof(sa.mask), 0, 0)
}

func setSigaction(sig syscall.Signal, sa *kernelSigaction) syscall.Errno {
	_, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(sa)), 0, unsafe.Sizeof(sa.mask), 0, 0)
	return e
}

// saveSignals records the current handlers of the guarded signals.
func saveSignals() *chdbSignalGuard {
	var g chdbSignalGuard
	for i, sig := range chdbGuardedSignals {
		getSigaction(sig, &g[i])
	}
	return &g
}

// restore puts back every saved handler that was a real handler (the Go
// runtime's) and has since been replaced. It reports the signals it restored.
func (g *chdbSignalGuard) restore() (restored []syscall.Signal) {
	for i, sig := range chdbGuardedSignals {
		saved := &g[i]
		if saved.handler == sigDFL || saved.handler == sigIGN {
			continue
		}
		var now kernelSigaction
		getSigaction(sig, &now)
		if now == *saved {
			continue
		}
		if setSigaction(sig, saved) == 0 {
			restored = append(restored, sig)
		}
	}
	return restored
}
