package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/meridian-run/meridian/driver"
	"github.com/meridian-run/meridian/pki"
)

// maxServiceUIDs bounds the user ids one machine hands out from
// Config.InstanceUIDBase.
const maxServiceUIDs = 65536

// serviceUIDs gives every service that runs on the machine its own
// unprivileged user and group id, InstanceUIDBase + n, kept in
// DataDir/uids.json so that a service keeps its id (and owns its files)
// across restarts; ids are never handed to another service.
type serviceUIDs struct {
	mu   sync.Mutex
	path string
	base uint32
	m    map[string]uint32 // service key -> n
}

func loadServiceUIDs(dataDir string, base uint32) (*serviceUIDs, error) {
	u := &serviceUIDs{path: filepath.Join(dataDir, "uids.json"), base: base, m: map[string]uint32{}}
	b, err := os.ReadFile(u.path)
	if errors.Is(err, os.ErrNotExist) {
		return u, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent: instance user ids: %w", err)
	}
	if err := json.Unmarshal(b, &u.m); err != nil {
		return nil, fmt.Errorf("agent: instance user ids (%s): %w", u.path, err)
	}
	return u, nil
}

// lookup returns the service's user id if it has one.
func (u *serviceUIDs) lookup(service string) (uint32, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	n, ok := u.m[service]
	return u.base + n, ok
}

// user returns the service's user, allocating it the first time.
func (u *serviceUIDs) user(service string) (*driver.User, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	n, ok := u.m[service]
	if !ok {
		for _, v := range u.m {
			n = max(n, v)
		}
		n++
		if n >= maxServiceUIDs {
			return nil, fmt.Errorf("agent: no user id left for service %s (%d handed out)", service, len(u.m))
		}
		u.m[service] = n
		b, err := json.Marshal(u.m)
		if err == nil {
			err = pki.WriteFileAtomic(u.path, b, 0o600)
		}
		if err != nil {
			delete(u.m, service)
			return nil, fmt.Errorf("agent: instance user ids: %w", err)
		}
	}
	id := u.base + n
	return &driver.User{UID: id, GID: id}, nil
}
