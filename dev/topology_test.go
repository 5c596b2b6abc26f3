package dev

import (
	"strings"
	"testing"
)

// TestTopologyEdges: the default topology has two edges, near fra and was;
// bad edge entries are refused naming the field.
func TestTopologyEdges(t *testing.T) {
	topo := DefaultTopology()
	if len(topo.Edges) != 2 || topo.Edges[0].Location != "par" || topo.Edges[1].Location != "nyc" {
		t.Fatalf("default edges: %+v", topo.Edges)
	}
	base := "regions: [{id: fra, datacenters: [{id: fra1, machines: 1}]}]\n"
	for body, want := range map[string]string{
		"edges: [{location: 'bad/name'}]":           "edges[0].location",
		"edges: [{location: par}, {location: par}]": "edges[1].location",
		"edges: [{location: par, latitude: 100}]":   "edges[0].latitude",
		"edges: [{location: par, longitude: -200}]": "edges[0].longitude",
		"edges: [{location: par, altitude: 3}]":     "altitude",
	} {
		_, err := ParseTopology([]byte(base + body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to name %s", body, err, want)
		}
	}
}
