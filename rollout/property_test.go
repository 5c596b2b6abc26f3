package rollout

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/meridian-run/meridian/api"
	"github.com/meridian-run/meridian/regionapi"
	"github.com/meridian-run/meridian/store"
)

// fate is how a simulated region behaves during a rollout.
type fate struct {
	acceptIn  int  // steps until the region answers the rollout operation
	refuse    bool // it answers with a refusal
	supersede bool // it answers that a newer generation is there
	healthyIn int  // steps from PROGRESSING until healthy (-1: never)
	failAfter int  // steps from PROGRESSING until instances start failing (-1: never)
	movedOn   int  // steps from PROGRESSING until another deployment's generation shows (-1: never)
	flaky     int  // percent of status reads that fail
	revertIn  int  // steps until the region answers a revert
	wanted    int
}

func randomFate(r *rand.Rand) fate {
	f := fate{acceptIn: r.IntN(4), healthyIn: -1, failAfter: -1, movedOn: -1, revertIn: r.IntN(5), wanted: 1 + r.IntN(3)}
	switch x := r.IntN(100); {
	case x < 5:
		f.refuse = true
	case x < 8:
		f.supersede = true
	case x < 14:
		f.acceptIn = 1000 // down: never answers
	}
	if r.IntN(10) == 0 {
		f.revertIn = 1000 // the revert is never answered
	}
	switch x := r.IntN(100); {
	case x < 55:
		f.healthyIn = r.IntN(8)
	case x < 75:
		f.failAfter = r.IntN(6)
	case x < 80:
		f.movedOn = r.IntN(4)
	}
	if r.IntN(4) == 0 {
		f.flaky = 10 + r.IntN(40)
	}
	return f
}

func randomStrategy(r *rand.Rand, regions []string) api.Strategy {
	s := api.Strategy{MaxParallelRegions: r.IntN(4), HealthDeadline: api.Duration([]string{"", "20s", "45s", "2m"}[r.IntN(4)])}
	if r.IntN(5) == 0 {
		s.Type = api.StrategyAllAtOnce
	} else if r.IntN(2) == 0 {
		s.Type = api.StrategyRolling
	}
	if r.IntN(2) == 0 {
		s.OnFailure = api.OnFailureAll
	} else if r.IntN(2) == 0 {
		s.OnFailure = api.OnFailureLocal
	}
	for _, reg := range regions {
		if r.IntN(4) == 0 {
			s.CanaryRegions = append(s.CanaryRegions, reg)
		}
	}
	return s
}

// simulate drives one random rollout to its end: regions answer
// operations and report status by their fates, the clock moves 1 to 10 s
// a step, and the user may cancel. The model checks every decision.
func simulate(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	all := []string{"fra", "was", "sin", "syd", "gru"}
	regions := all[:1+r.IntN(len(all))]
	r.Shuffle(len(regions), func(i, j int) { regions[i], regions[j] = regions[j], regions[i] })
	m := newModel(t, newDeployment(randomStrategy(r, regions), regions...))
	fates := map[string]fate{}
	for i, reg := range regions {
		fates[reg] = randomFate(r)
		if r.IntN(2) == 0 {
			m.previous(reg, 1)
		}
		if r.IntN(3) == 0 {
			m.st.Generations[reg] = int64(1 + i)
		}
	}
	cancelAt := -1
	if r.IntN(6) == 0 {
		cancelAt = r.IntN(30)
	}
	created := map[string]int{} // op id -> step
	var failing []string
	for step := 0; step < 3000 && m.finishedAt < 0; step++ {
		// The regions' workers answer operations.
		for i := range m.st.Ops {
			o := &m.st.Ops[i]
			if _, ok := created[o.ID]; !ok {
				created[o.ID] = step
			}
			f := fates[o.Region]
			if o.State != store.OpPending {
				continue
			}
			switch {
			case o.Purpose == store.PurposeRevert && step-created[o.ID] >= f.revertIn:
				o.State = store.OpDone
			case o.Purpose == store.PurposeRollout && step-created[o.ID] >= f.acceptIn:
				o.State = store.OpDone
				if f.refuse {
					o.State, o.Message = store.OpFailed, fmt.Sprintf("region %s refused generation %d: 400", o.Region, o.Generation)
				}
				if f.supersede {
					o.State, o.Message = store.OpSuperseded, fmt.Sprintf("region %s holds a newer generation: 409", o.Region)
				}
			case o.Purpose == store.PurposeRollout && r.IntN(3) == 0:
				o.Message = "connection refused; retrying with backoff"
			}
		}
		// The regions report.
		obs := map[string]Observation{}
		for _, rd := range m.st.Deployment.Regional {
			if rd.Status != api.StatusProgressing {
				continue
			}
			f := fates[rd.Region]
			since := step - m.progressingAt[rd.Region]
			ss := regionapi.ServiceStatus{Generation: rd.Generation, DeploymentID: m.st.Deployment.ID, Version: 2,
				Phase: regionapi.PhaseProgressing, Wanted: f.wanted, Message: fmt.Sprintf("%d/%d healthy", r.IntN(f.wanted), f.wanted)}
			switch {
			case r.IntN(100) < f.flaky:
				obs[rd.Region] = Observation{Err: []error{errors.New("connection refused"), &api.Error{Status: 404, Code: "not_found", Message: "no such service"}}[r.IntN(2)]}
				continue
			case r.IntN(5) == 0:
				continue // not observed this step
			case f.movedOn >= 0 && since >= f.movedOn:
				ss.Generation, ss.DeploymentID = rd.Generation+1, "dep_v3"
			case f.healthyIn >= 0 && since >= f.healthyIn:
				ss.Phase, ss.Healthy, ss.Message = regionapi.PhaseHealthy, f.wanted, ""
			case f.failAfter >= 0 && since >= f.failAfter:
				if !slices.Contains(failing, rd.Region) {
					failing = append(failing, rd.Region)
				}
				// One more instance fails each step; the region lists some
				// of those that failed before.
				for i := range min(since-f.failAfter+1, f.wanted) {
					if r.IntN(2) == 0 || i == since-f.failAfter {
						ss.Failures = append(ss.Failures, regionapi.InstanceStatus{ID: fmt.Sprintf("%s-i%d", rd.Region, i),
							DeploymentID: m.st.Deployment.ID, State: regionapi.StateFailed, Machine: "m1", Restarts: 2})
					}
				}
			}
			obs[rd.Region] = Observation{Status: ss}
		}
		m.advance(time.Duration(1+r.IntN(10)) * time.Second)
		if step == cancelAt && m.st.Active && (m.st.Deployment.Status == api.StatusPending || m.st.Deployment.Status == api.StatusProgressing) {
			m.cancel()
			if m.finishedAt >= 0 {
				break
			}
			continue
		}
		m.decide(obs)
	}
	m.checkFinished()
	// A region fails by its instances only once as many failed as it
	// wants, counting those remembered from earlier steps.
	for _, reg := range m.failed {
		var n, wanted int
		if _, err := fmt.Sscanf(m.region(reg).Message, "%d instances failed past their restart limit (wanted %d)", &n, &wanted); err != nil {
			continue // failed otherwise
		}
		if n < wanted || n != len(m.st.Failed[reg]) || wanted != fates[reg].wanted {
			t.Fatalf("%s failed with %d instances failed (%d remembered), wanting %d (fate %d)\n%s", reg, n, len(m.st.Failed[reg]), wanted, fates[reg].wanted, m.history())
		}
	}
}

// TestDecideProperties drives random rollouts (strategies, region
// behaviours, cancellations) to their end, checking every decision against
// the model's rules: never more regions in flight than the strategy
// allows; no region before every canary is healthy; one rollout operation
// per region, numbered with the next generation; every failed or rolled
// back region reverted to its previous healthy deployment (or the service
// stopped there); legal status changes only; the outcome following from the
// regions; nothing after the end.
func TestDecideProperties(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 200
	}
	for seed := range uint64(n) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { simulate(t, seed) })
	}
}
