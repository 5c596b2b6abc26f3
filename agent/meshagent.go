package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/meridian-run/meridian/regionapi"
)

// Feed stream reconnection backoff and silence limit (the region sends a
// keepalive line every 10s).
const (
	feedBackoffMin  = 100 * time.Millisecond
	feedBackoffMax  = 2 * time.Second
	feedIdleTimeout = 35 * time.Second
)

// startMesh starts the mesh with the agent's identity and region clients.
func (a *Agent) startMesh() error {
	if a.cfg.Mesh == nil {
		return nil
	}
	m, err := newMesh(meshDeps{
		Config:         *a.cfg.Mesh,
		Address:        a.cfg.Address,
		Region:         a.cfg.Region,
		Datacenter:     a.cfg.Datacenter,
		Machine:        a.cfg.Name,
		TrustDomain:    a.id.meta.TrustDomain,
		Roots:          a.cfg.Roots,
		NodeCerts:      a.id.certs,
		StateDir:       filepath.Join(a.cfg.DataDir, "mesh"),
		HostResolvConf: *a.cfg.ResolvConf,
		Dialer:         a.cfg.Dialer,
		Clock:          a.clock,
		Logger:         a.log,
		Issue:          a.issueWorkloadCert,
		Local:          a.localInstance,
		PID:            a.instancePID,
		ServiceUID:     a.serviceUID,
		Feed:           a.followFeed,
	})
	if err != nil {
		return err
	}
	a.mesh = m
	return nil
}

// MeshPort is the node proxy's port (0 without a mesh).
func (a *Agent) MeshPort() int {
	if a.mesh == nil {
		return 0
	}
	return a.mesh.port()
}

// localInstance finds an instance of this machine for the node proxy,
// with the declared ports its definition routes publicly.
func (a *Agent) localInstance(id string) (NodeInstance, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	in, ok := a.insts[id]
	if !ok || in.stopping {
		return NodeInstance{}, false
	}
	var public []int
	for _, r := range in.asg.Definition.Routes {
		if !slices.Contains(public, r.Port) {
			public = append(public, r.Port)
		}
	}
	return NodeInstance{Org: in.asg.Org, App: in.asg.App, Service: in.asg.ServiceName, Ports: in.ports, Public: public}, true
}

// serviceUID is the user a service's instances run as, when the agent
// gives services their own.
func (a *Agent) serviceUID(service string) (uint32, bool) {
	if a.uids == nil {
		return 0, false
	}
	return a.uids.lookup(service)
}

// instancePID is the host pid of a running instance's top process (0 when
// it does not run).
func (a *Agent) instancePID(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if in, ok := a.insts[id]; ok && !in.stopping {
		return in.pid
	}
	return 0
}

// meshResolvConf registers an instance with the mesh and returns its
// resolv.conf (the agent's default without a mesh).
func (a *Agent) meshResolvConf(id, org, app, service string) (string, error) {
	if a.mesh == nil {
		return *a.cfg.ResolvConf, nil
	}
	return a.mesh.acquire(id, org, app, service)
}

// meshRelease unregisters a removed instance.
func (a *Agent) meshRelease(id string) {
	if a.mesh != nil {
		a.mesh.release(id)
	}
}

// followFeed streams the region's merged feed to fn until ctx ends,
// failing over between the region's servers; after an error the last
// good feed stays in use.
func (a *Agent) followFeed(ctx context.Context, fn func(regionapi.Feed)) error {
	idx := int(a.rc.preferred.Load())
	backoff := feedBackoffMin
	failing := false
	for ctx.Err() == nil {
		got, err := a.feedOnce(ctx, idx, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if got {
			backoff, failing = feedBackoffMin, false
		}
		if !failing {
			a.log.Info("mesh: endpoint feed interrupted; keeping the last one and resuming", "server", a.rc.urls[idx], "err", err)
			failing = true
		} else {
			a.log.Debug("mesh: endpoint feed failed", "server", a.rc.urls[idx], "err", err)
		}
		idx = (idx + 1) % len(a.rc.clients)
		if !a.sleep(ctx, backoff) {
			return ctx.Err()
		}
		backoff = min(2*backoff, feedBackoffMax)
	}
	return ctx.Err()
}

// feedOnce reads one feed stream from server idx; it reports whether a
// feed arrived.
func (a *Agent) feedOnce(ctx context.Context, idx int, fn func(regionapi.Feed)) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := a.rc.clients[idx]
	req, err := http.NewRequestWithContext(ctx, "GET", c.BaseURL+"/v1/feed?local=false", nil)
	if err != nil {
		return false, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return false, fmt.Errorf("GET /v1/feed: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("GET /v1/feed: %s", resp.Status)
	}
	alive := make(chan struct{}, 1)
	go func() {
		for {
			t := a.clock.NewTimer(feedIdleTimeout)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-alive:
				t.Stop()
			case <-t.C():
				a.log.Warn("mesh: endpoint feed silent; reopening it", "idle", feedIdleTimeout)
				cancel()
				return
			}
		}
	}()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	got := false
	for sc.Scan() {
		select {
		case alive <- struct{}{}:
		default:
		}
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || string(line) == "{}" {
			continue // keepalive
		}
		var f regionapi.Feed
		if err := json.Unmarshal(line, &f); err != nil {
			return got, fmt.Errorf("feed: %w", err)
		}
		if f.Region != a.cfg.Region {
			return got, fmt.Errorf("feed: the region sent the feed of %q, not %q", f.Region, a.cfg.Region)
		}
		got = true
		fn(f)
	}
	if err := sc.Err(); err != nil {
		return got, fmt.Errorf("feed: %w", err)
	}
	return got, errors.New("feed: stream ended")
}
