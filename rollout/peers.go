package rollout

import (
	"context"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// peersInterval is how often every serving region is told the others.
const peersInterval = 5 * time.Second

// announcePeers tells every serving region (open or draining) which other
// regions serve, every peersInterval, so regions exchange endpoint feeds
// directly; they cache the list and keep exchanging while global is down.
func (e *Engine) announcePeers() {
	tick := time.NewTicker(peersInterval)
	defer tick.Stop()
	for {
		e.sendPeers()
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sendPeers sends every serving region its peers. It sends even when
// nothing changed: a region that lost its state learns them again.
func (e *Engine) sendPeers() {
	ctx, cancel := context.WithTimeout(e.ctx, peersInterval)
	defer cancel()
	var regions []api.Region
	err := e.cfg.Store.View(ctx, func(tx store.Tx) error {
		var err error
		regions, err = allRegions(ctx, tx)
		return err
	})
	if err != nil {
		e.log.Warn("listing regions for their peers", "err", err)
		return
	}
	var serving []regionapi.Peer
	for _, r := range regions {
		if (r.Status == api.RegionOpen || r.Status == api.RegionDraining) && r.URL != "" {
			serving = append(serving, regionapi.Peer{ID: r.ID, URL: r.URL, Latitude: r.Latitude, Longitude: r.Longitude})
		}
	}
	for _, self := range serving {
		p := regionapi.Peers{Self: self, Peers: []regionapi.Peer{}}
		for _, other := range serving {
			if other.ID != self.ID {
				p.Peers = append(p.Peers, other)
			}
		}
		if err := regionapi.NewClient(self.URL, e.cfg.RegionHTTP).SetPeers(ctx, p); err != nil {
			e.log.Debug("telling a region its peers", "region", self.ID, "err", err)
		}
	}
}
