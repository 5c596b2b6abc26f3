// Package examples ships the bundled example files inside the binary: the
// default topology of `meridian dev` and the demo app's definition.
package examples

import _ "embed"

// DevTopology is examples/dev-topology.yaml.
//
//go:embed dev-topology.yaml
var DevTopology []byte

// HelloDefinition is examples/hello/meridian.yaml.
//
//go:embed hello/meridian.yaml
var HelloDefinition []byte
