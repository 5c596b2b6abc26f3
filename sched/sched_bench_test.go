package sched

import (
	"fmt"
	"testing"
)

// benchRegion builds an empty region: machines over three data centers in
// two sizes, and groups of ten instances with mixed requests, a fifth of
// them limited to one or two data centers.
func benchRegion(machines, instances int) Snapshot {
	dcs := []string{"fra1", "fra2", "fra3"}
	s := Snapshot{Revision: 1, IDPrefix: "fra-"}
	for i := range machines {
		m := Machine{ID: fmt.Sprintf("m%05d", i), Datacenter: dcs[i%3], MilliCPU: 8000, MemoryMB: 16384, Ready: true}
		if i%4 == 0 {
			m.MilliCPU, m.MemoryMB = 16000, 32768
		}
		s.Machines = append(s.Machines, m)
	}
	cpus := []int{250, 500, 1000}
	mems := []int{256, 512, 1024}
	for i := range instances / 10 {
		g := Group{
			Key:        fmt.Sprintf("org%03d/app/svc%05d", i%100, i),
			Deployment: fmt.Sprintf("d%05d", i),
			Version:    1,
			Count:      10,
			MilliCPU:   cpus[i%3],
			MemoryMB:   mems[(i/3)%3],
		}
		switch i % 10 {
		case 0:
			g.Datacenters = []string{dcs[i%3]}
		case 5:
			g.Datacenters = []string{dcs[i%3], dcs[(i+1)%3]}
		}
		s.Groups = append(s.Groups, g)
	}
	return s
}

func benchEmpty(b *testing.B, machines, instances int) {
	s := benchRegion(machines, instances)
	p, err := Schedule(s)
	if err != nil {
		b.Fatal(err)
	}
	if len(p.Place) != instances || len(p.Pending) != 0 {
		b.Fatalf("placed %d of %d, pending %+v", len(p.Place), instances, p.Pending)
	}
	b.ReportAllocs()
	placed := 0
	for b.Loop() {
		p, _ := Schedule(s)
		placed += len(p.Place)
	}
	b.ReportMetric(float64(placed)/b.Elapsed().Seconds(), "placements/s")
}

// BenchmarkSchedule10kInstances1kMachines places 10,000 instances on an
// empty region of 1,000 machines.
func BenchmarkSchedule10kInstances1kMachines(b *testing.B) { benchEmpty(b, 1_000, 10_000) }

// BenchmarkSchedule100kInstances10kMachines places 100,000 instances on an
// empty region of 10,000 machines.
func BenchmarkSchedule100kInstances10kMachines(b *testing.B) { benchEmpty(b, 10_000, 100_000) }

// settledRegion is benchRegion with every instance placed, running and
// healthy.
func settledRegion(b *testing.B, machines, instances int) Snapshot {
	s := benchRegion(machines, instances)
	p, err := Schedule(s)
	if err != nil {
		b.Fatal(err)
	}
	s, err = Apply(s, p)
	if err != nil {
		b.Fatal(err)
	}
	s.Revision++
	for i := range s.Instances {
		s.Instances[i].State, s.Instances[i].Healthy = StateRunning, true
	}
	return s
}

// BenchmarkScheduleSteady100kInstances10kMachines schedules a settled
// region of 100,000 instances where one machine was lost: the cost of the
// common round.
func BenchmarkScheduleSteady100kInstances10kMachines(b *testing.B) {
	s := settledRegion(b, 10_000, 100_000)
	s.Machines[1234].Ready = false
	p, err := Schedule(s)
	if err != nil || len(p.Place) == 0 || len(p.Place) != len(p.Stop) {
		b.Fatalf("plan: %d placed, %d stopped, %v", len(p.Place), len(p.Stop), err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = Schedule(s)
	}
}

// BenchmarkScheduleDatacenterLost100kInstances10kMachines schedules a
// settled region of 100,000 instances after one of its three data centers
// died: about a third of the instances are re-placed in the other two.
func BenchmarkScheduleDatacenterLost100kInstances10kMachines(b *testing.B) {
	s := settledRegion(b, 10_000, 100_000)
	for i := range s.Machines {
		if s.Machines[i].Datacenter == "fra2" {
			s.Machines[i].Ready = false
		}
	}
	benchPlace(b, s)
}

// BenchmarkScheduleOneGroup100kInstances10kMachines places one group of
// 100,000 instances on 10,000 machines: every machine ends with ten, so
// most placements go to machines that already hold the group.
func BenchmarkScheduleOneGroup100kInstances10kMachines(b *testing.B) {
	s := benchRegion(10_000, 0)
	s.Groups = []Group{{Key: "org/app/big", Deployment: "d1", Count: 100_000, MilliCPU: 100, MemoryMB: 128}}
	benchPlace(b, s)
}

// BenchmarkScheduleOverfull200kDemand10kMixedMachines asks for twice the
// region's capacity on 10,000 machines of 1,961 different sizes: the worst
// case for the indexes, where most machines are nearly full and a request
// may fit only machines deep in the heaps.
func BenchmarkScheduleOverfull200kDemand10kMixedMachines(b *testing.B) {
	s := benchRegion(10_000, 0)
	for i := range s.Machines {
		s.Machines[i].MilliCPU = 1000 + (i%37)*100
		s.Machines[i].MemoryMB = 1024 + (i%53)*64
	}
	for i := range 20_000 {
		s.Groups = append(s.Groups, Group{Key: fmt.Sprintf("org/app/s%05d", i), Deployment: "d1", Count: 10, MilliCPU: 100 + (i%7)*150, MemoryMB: 128 + (i%5)*200})
	}
	benchPlace(b, s)
}

// BenchmarkScheduleOverfull200kDemand10kMachines asks for twice the
// capacity of 10,000 machines of three sizes.
func BenchmarkScheduleOverfull200kDemand10kMachines(b *testing.B) {
	s := benchRegion(10_000, 0)
	sizes := [3][2]int{{4000, 8192}, {8000, 16384}, {16000, 65536}}
	for i := range s.Machines {
		s.Machines[i].MilliCPU, s.Machines[i].MemoryMB = sizes[i%3][0], sizes[i%3][1]
	}
	for i := range 20_000 {
		s.Groups = append(s.Groups, Group{Key: fmt.Sprintf("org/app/s%05d", i), Deployment: "d1", Count: 10, MilliCPU: 250 + (i%7)*250, MemoryMB: 256 + (i%5)*512})
	}
	benchPlace(b, s)
}

func benchPlace(b *testing.B, s Snapshot) {
	p, err := Schedule(s)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	placed := 0
	for b.Loop() {
		p, _ = Schedule(s)
		placed += len(p.Place)
	}
	b.ReportMetric(float64(placed)/b.Elapsed().Seconds(), "placements/s")
	b.ReportMetric(float64(len(p.Place)), "placements/op")
	b.ReportMetric(float64(pendingTotal(p)), "pending/op")
}

// BenchmarkScheduleScaleDownOneGroup100kTo50k halves a settled group of
// 100,000 instances on 10,000 machines.
func BenchmarkScheduleScaleDownOneGroup100kTo50k(b *testing.B) {
	s := benchRegion(10_000, 0)
	s.Groups = []Group{{Key: "org/app/big", Deployment: "d1", Count: 100_000, MilliCPU: 100, MemoryMB: 128}}
	p, err := Schedule(s)
	if err != nil {
		b.Fatal(err)
	}
	if s, err = Apply(s, p); err != nil {
		b.Fatal(err)
	}
	for i := range s.Instances {
		s.Instances[i].State, s.Instances[i].Healthy = StateRunning, i%10 != 0
	}
	s.Groups[0].Count = 50_000
	b.ReportAllocs()
	stopped := 0
	for b.Loop() {
		p, _ = Schedule(s)
		stopped += len(p.Stop)
	}
	if len(p.Stop) != 50_000 {
		b.Fatalf("stopped %d, want 50000", len(p.Stop))
	}
	b.ReportMetric(float64(stopped)/b.Elapsed().Seconds(), "stops/s")
}
