package region

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/clock"
	"github.com/meridian-run/meridian/pki"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/sched"
)

// feedHub keeps this server's current endpoint feeds: the region's own
// (local) and the one merged with its peers' (for agents). One goroutine
// rebuilds them on every change of the region's state (debounced) or of a
// peer's feed; subscribers wait for a newer version of the feed they read
// and send it. Each feed's version moves only when its content changes, so
// an unchanged region sends nothing but keepalives.
type feedHub struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every new version
	local   feedVersion
	merged  feedVersion
	peers   map[string]*regionapi.PeerFeed
	self    *regionapi.Peer // as global last described this region
	kick    chan struct{}
}

// feedVersion is one feed's JSON and its version (0 until first built).
type feedVersion struct {
	version int64
	body    []byte
}

func (v *feedVersion) set(body []byte) bool {
	if v.version > 0 && bytes.Equal(body, v.body) {
		return false
	}
	v.body = body
	v.version++
	return true
}

func newFeedHub() *feedHub {
	return &feedHub{changed: make(chan struct{}), peers: map[string]*regionapi.PeerFeed{}, kick: make(chan struct{}, 1)}
}

// current returns the latest local or merged feed, and a channel closed
// when either changes.
func (h *feedHub) current(local bool) (feedVersion, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if local {
		return h.local, h.changed
	}
	return h.merged, h.changed
}

func (h *feedHub) publish(local, merged []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, m := h.local.set(local), h.merged.set(merged)
	if l || m {
		close(h.changed)
		h.changed = make(chan struct{})
	}
}

// rebuild asks for a rebuild (a peer's feed changed).
func (h *feedHub) rebuild() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// runFeeds rebuilds the feeds on every change until ctx ends.
func (s *Server) runFeeds(ctx context.Context) {
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.keys.root, clientv3.WithPrefix())
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		if err := s.buildFeeds(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("building the endpoint feed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-s.feeds.kick:
		case resp, ok := <-wch:
			if !ok || resp.Canceled {
				// The watch broke (etcd leader change): watch again.
				clock.Sleep(ctx, clock.Real(), 100*time.Millisecond)
				wch = s.cli.Watch(clientv3.WithRequireLeader(ctx), s.keys.root, clientv3.WithPrefix())
				continue
			}
		}
		// Debounce: gather what else arrives within 100ms.
		deadline := time.After(100 * time.Millisecond)
	gather:
		for {
			select {
			case <-ctx.Done():
				return
			case <-wch:
			case <-s.feeds.kick:
			case <-deadline:
				break gather
			}
		}
	}
}

// buildFeeds computes the local and merged feeds.
func (s *Server) buildFeeds(ctx context.Context) error {
	v, err := s.readView(ctx)
	if err != nil {
		return err
	}
	local := regionapi.Feed{Region: s.cfg.Region, Revision: v.rev, Services: []regionapi.FeedService{}}
	keys := make([]string, 0, len(v.services))
	for k, rec := range v.services {
		if !rec.Deleted {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	machines := map[string]machineRecord{}
	for _, m := range v.machines {
		machines[m.ID] = m
	}
	for _, key := range keys {
		rec := v.services[key]
		sp, err := s.spec(ctx, rec.DeploymentID)
		if err != nil {
			return err
		}
		fs := regionapi.FeedService{Key: key, Org: rec.Org, App: rec.App, Service: rec.Service, DeploymentID: rec.DeploymentID,
			Version: rec.Version, Type: sp.Definition.Type, Ports: sp.Definition.Ports, Routes: sp.Definition.Routes,
			Endpoints: []regionapi.Endpoint{}}
		if fs.Ports == nil {
			fs.Ports = []api.Port{}
		}
		if fs.Routes == nil {
			fs.Routes = []api.Route{}
		}
		for _, a := range v.assigns {
			if a.Service != key || a.State == string(sched.StateLost) {
				continue
			}
			st, ok := v.status[a.ID]
			if !ok || len(st.Ports) == 0 {
				continue // not started yet: nothing to reach
			}
			m := machines[a.Machine]
			fs.Endpoints = append(fs.Endpoints, regionapi.Endpoint{Instance: a.ID, DeploymentID: a.DeploymentID,
				Datacenter: a.Datacenter, Machine: a.Machine, Address: m.Address, Ports: st.Ports, MeshPort: m.MeshPort,
				Healthy: st.Healthy && st.State == regionapi.StateRunning && v.alive[a.Machine]})
		}
		slices.SortFunc(fs.Endpoints, func(a, b regionapi.Endpoint) int { return strings.Compare(a.Instance, b.Instance) })
		local.Services = append(local.Services, fs)
	}
	lb, err := json.Marshal(local)
	if err != nil {
		return err
	}
	merged := local
	s.feeds.mu.Lock()
	for _, id := range slices.Sorted(mapsKeys(s.feeds.peers)) {
		merged.Peers = append(merged.Peers, *s.feeds.peers[id])
	}
	if s.feeds.self != nil {
		self := *s.feeds.self
		merged.Self = &self
	}
	s.feeds.mu.Unlock()
	mb, err := json.Marshal(merged)
	if err != nil {
		return err
	}
	s.feeds.publish(lb, mb)
	return nil
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// serveFeed streams the feed as NDJSON: the current one at once, then each
// one whose content changed; a keepalive line after FeedKeepalive without
// one.
func (s *Server) serveFeed(w http.ResponseWriter, r *http.Request) error {
	local := r.URL.Query().Get("local") != "false"
	if id := callerOf(r.Context()); id.Kind == pki.KindMachine && id.Region == s.cfg.Region {
		local = r.URL.Query().Get("local") == "true"
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("streaming unsupported")
	}
	ctx := r.Context()
	// Wait (briefly) for the first build.
	for i := 0; i < 100; i++ {
		if f, _ := s.feeds.current(local); f.version > 0 {
			break
		}
		clock.Sleep(ctx, clock.Real(), 50*time.Millisecond)
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	keepalive := time.NewTicker(s.cfg.FeedKeepalive)
	defer keepalive.Stop()
	sent := int64(-1)
	for {
		f, changed := s.feeds.current(local)
		if f.version != sent && f.version > 0 {
			// f.body is shared by every subscriber: write it as it is (an
			// append would write into its spare capacity), then the
			// newline.
			if _, err := w.Write(f.body); err != nil {
				return nil
			}
			if _, err := w.Write([]byte{'\n'}); err != nil {
				return nil
			}
			fl.Flush()
			sent = f.version
			keepalive.Reset(s.cfg.FeedKeepalive)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-keepalive.C:
			if _, err := w.Write([]byte("{}\n")); err != nil {
				return nil
			}
			fl.Flush()
		}
	}
}

// setPeers stores the peer regions global sent; the feed follower picks
// them up from etcd (so a restarted server knows them while global is
// down).
func (s *Server) setPeers(w http.ResponseWriter, r *http.Request) error {
	var p regionapi.Peers
	if err := s.decode(w, r, &p); err != nil {
		return err
	}
	for i, peer := range p.Peers {
		if err := pki.ValidateName(peer.ID); err != nil {
			return fieldError(fmt.Sprintf("peers[%d].id", i), "%q: %v", peer.ID, err)
		}
		if !strings.HasPrefix(peer.URL, "https://") {
			return fieldError(fmt.Sprintf("peers[%d].url", i), "%q is not an https URL", peer.URL)
		}
	}
	v := mustJSON(p)
	cur, err := s.cli.Get(r.Context(), s.keys.peers())
	if err != nil {
		return fmt.Errorf("read peers: %w", err)
	}
	if len(cur.Kvs) == 0 || string(cur.Kvs[0].Value) != v {
		// Written only when it changed: global sends it every few seconds.
		if _, err := s.cli.Put(r.Context(), s.keys.peers(), v); err != nil {
			return fmt.Errorf("store peers: %w", err)
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// followPeers keeps one feed subscription per peer region (from the peers
// record in etcd) and folds their feeds into the merged feed. A peer whose
// feed breaks keeps its last endpoints, marked disconnected.
func (s *Server) followPeers(ctx context.Context) {
	// A silent feed is cut after PeerFeedIdle, and HTTP/2 pings find
	// the dead connection under it, so the next attempt dials afresh.
	ping := min(s.cfg.PeerFeedIdle/2, 5*time.Second)
	tr := &http.Transport{TLSClientConfig: pki.ClientConfig(s.certs, s.roots, pki.AllowKinds(pki.KindServer)),
		ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 10 * time.Second,
		HTTP2: &http.HTTP2Config{SendPingTimeout: ping, PingTimeout: ping}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: regionapi.IdleTransport{Base: tr, Idle: s.cfg.PeerFeedIdle}}
	running := map[string]context.CancelFunc{}
	urls := map[string]string{}
	var followers sync.WaitGroup
	defer func() {
		for _, cancel := range running {
			cancel()
		}
		followers.Wait() // nothing outlives the server's Close
	}()
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.keys.peers())
	for {
		resp, err := s.cli.Get(ctx, s.keys.peers())
		if err == nil {
			var p regionapi.Peers
			if len(resp.Kvs) == 1 {
				if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
					s.log.Warn("peers record", "err", err)
				}
			}
			if p.Self.ID == s.cfg.Region {
				self := p.Self
				s.feeds.mu.Lock()
				changed := s.feeds.self == nil || *s.feeds.self != self
				s.feeds.self = &self
				s.feeds.mu.Unlock()
				if changed {
					s.feeds.rebuild()
				}
			}
			want := map[string]regionapi.Peer{}
			for _, peer := range p.Peers {
				if peer.ID != s.cfg.Region {
					want[peer.ID] = peer
				}
			}
			for id, cancel := range running {
				if peer, ok := want[id]; !ok || peer.URL != urls[id] {
					cancel()
					delete(running, id)
					s.feeds.mu.Lock()
					delete(s.feeds.peers, id)
					s.feeds.mu.Unlock()
					s.feeds.rebuild()
				}
			}
			for id, peer := range want {
				if _, ok := running[id]; ok {
					continue
				}
				pctx, cancel := context.WithCancel(ctx)
				running[id], urls[id] = cancel, peer.URL
				followers.Go(func() { s.followPeer(pctx, regionapi.NewClient(peer.URL, hc), peer) })
			}
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-wch:
			if !ok {
				clock.Sleep(ctx, clock.Real(), time.Second)
				wch = s.cli.Watch(clientv3.WithRequireLeader(ctx), s.keys.peers())
			}
		case <-time.After(30 * time.Second):
		}
	}
}

// followPeer subscribes to one peer's local feed, reconnecting with
// backoff.
func (s *Server) followPeer(ctx context.Context, c *regionapi.Client, peer regionapi.Peer) {
	backoff := clock.Backoff{Min: 250 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.2}
	for ctx.Err() == nil {
		err := c.Feed(ctx, true, func(f regionapi.Feed) error {
			if f.Region != peer.ID {
				return fmt.Errorf("peer %s sent the feed of %q", peer.ID, f.Region)
			}
			s.feeds.mu.Lock()
			if old := s.feeds.peers[peer.ID]; old != nil && old.Connected && reflect.DeepEqual(old.Services, f.Services) {
				// Nothing the merged feed carries changed (only the
				// peer's revision, say): the agents get no update.
				s.feeds.mu.Unlock()
				backoff.Reset()
				return nil
			}
			s.feeds.peers[peer.ID] = &regionapi.PeerFeed{Region: peer.ID, Latitude: peer.Latitude, Longitude: peer.Longitude,
				Received: s.cfg.Now().UTC(), Connected: true, Services: f.Services}
			s.feeds.mu.Unlock()
			s.feeds.rebuild()
			backoff.Reset()
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		s.feeds.mu.Lock()
		if pf, ok := s.feeds.peers[peer.ID]; ok && pf.Connected {
			pf.Connected = false
			s.log.Warn("peer feed lost; keeping its last endpoints", "peer", peer.ID, "err", err)
		}
		s.feeds.mu.Unlock()
		s.feeds.rebuild()
		backoff.Wait(ctx, clock.Real())
	}
}
