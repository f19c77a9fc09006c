package registry

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"strings"
	"sync"
	"time"
)

// Session is what AuthenticateSession admits.
type Session struct {
	// Until is when the session must end: zero for a token, for a JWT its
	// exp plus the clock skew (or the credential's expiry if sooner).
	Until time.Time
	// Credential identifies the credential the device proved, for
	// SessionValid. It is opaque and stable: indexes shift when another
	// credential is removed, so it is a digest of the credential's type,
	// creation time and stored material (token hash or public key). It
	// reveals nothing secret and may be logged.
	Credential string
}

// ref is the Credential of a Session opened with c.
func (c Credential) ref() string {
	h := sha256.New()
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(c.CreatedAt.UnixNano()))
	h.Write([]byte(c.Type))
	h.Write([]byte{0})
	h.Write(ts[:])
	h.Write(c.TokenSHA256)
	h.Write([]byte(c.PublicKey))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// SessionValid reports whether a session of the device opened with the
// credential (Session.Credential) may go on: the device exists, is not
// blocked, and still holds that credential, unexpired (a session admitted by
// the client CA needs no credential). The broker asks it
// when Watch says the device changed.
func (r *Registry) SessionValid(deviceID, credential string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.devices[deviceID]
	if !ok || e.dev.Blocked {
		return false
	}
	if strings.HasPrefix(credential, caRefPrefix) {
		return true // admitted by the client CA, not by a credential of the device
	}
	i := slices.Index(e.refs, credential)
	if i < 0 {
		return false
	}
	exp := e.dev.Credentials[i].ExpiresAt
	return exp.IsZero() || r.now().Before(exp)
}

func credentialRefs(creds []Credential) []string {
	refs := make([]string, len(creds))
	for i, c := range creds {
		refs[i] = c.ref()
	}
	return refs
}

// watchers are the functions Watch registered.
type watchers struct {
	mu  sync.Mutex
	fns map[*func(string)]struct{}
}

// Watch calls fn with the device id after this instance applied a record
// of that device (written here or by another instance, and during the
// initial catch-up), including deletions. fn runs on Run's goroutine with
// no lock held: it must be quick and must not write to the registry (a
// write waits for Run). Reading (Get, SessionValid) is fine. stop ends the
// calls; after it returned fn is not called again.
func (r *Registry) Watch(fn func(deviceID string)) (stop func()) {
	r.watch.mu.Lock()
	defer r.watch.mu.Unlock()
	if r.watch.fns == nil {
		r.watch.fns = map[*func(string)]struct{}{}
	}
	key := &fn
	r.watch.fns[key] = struct{}{}
	return func() {
		r.watch.mu.Lock()
		defer r.watch.mu.Unlock()
		delete(r.watch.fns, key)
	}
}

// notify calls the watchers. Holding watch.mu while calling keeps stop's
// promise (no call after it returned); watchers are quick by contract.
func (r *Registry) notify(id string) {
	r.watch.mu.Lock()
	defer r.watch.mu.Unlock()
	for fn := range r.watch.fns {
		(*fn)(id)
	}
}
