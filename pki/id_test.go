package pki_test

import (
	"strings"
	"testing"

	"github.com/meridian-run/meridian/pki"
)

func TestParseIDValid(t *testing.T) {
	const td = "meridian.local"
	tests := []struct {
		in   string
		want pki.ID
	}{
		{"spiffe://meridian.local/global", pki.GlobalID(td)},
		{"spiffe://meridian.local/region/fra/server", pki.ServerID(td, "fra")},
		{"spiffe://meridian.local/region/fra/machine/m-01", pki.MachineID(td, "fra", "m-01")},
		{"spiffe://meridian.local/edge/par", pki.EdgeID(td, "par")},
		{"spiffe://meridian.local/org/acme/app/shop/service/web", pki.WorkloadID(td, "acme", "shop", "web")},
		{"spiffe://a_b-c.d/region/Was.1/machine/A_b", pki.MachineID("a_b-c.d", "Was.1", "A_b")},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := pki.ParseID(tt.in)
			if err != nil {
				t.Fatalf("ParseID: %v", err)
			}
			if got != tt.want {
				t.Fatalf("ParseID = %+v, want %+v", got, tt.want)
			}
			if err := got.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got.String() != tt.in {
				t.Fatalf("String = %q, want %q", got.String(), tt.in)
			}
			if u := got.URI().String(); u != tt.in {
				t.Fatalf("URI = %q, want %q", u, tt.in)
			}
			back, err := pki.IDFromURI(got.URI())
			if err != nil || back != got {
				t.Fatalf("IDFromURI round trip = %+v, %v", back, err)
			}
		})
	}
}

func TestParseIDInvalid(t *testing.T) {
	tests := []struct {
		in, wantErr string
	}{
		{"", "empty"},
		{"http://meridian.local/global", "scheme"},
		{"SPIFFE://meridian.local/global", "scheme"},
		{"spiffe:/meridian.local/global", "scheme"},
		{"spiffe://", "trust domain: must not be empty"},
		{"spiffe:///global", "trust domain: must not be empty"},
		{"spiffe://Meridian.local/global", "invalid character 'M'"},
		{"spiffe://meridian.local:8443/global", "invalid character ':'"},
		{"spiffe://user@meridian.local/global", "invalid character '@'"},
		{"spiffe://meridian.local", "path: missing"},
		{"spiffe://meridian.local/", "path: missing"},
		{"spiffe://meridian.local/global/", "path segment 2: must not be empty"},
		{"spiffe://meridian.local//global", "path segment 1: must not be empty"},
		{"spiffe://meridian.local/region/fra", "not a known identity"},
		{"spiffe://meridian.local/region/fra/server/x", "not a known identity"},
		{"spiffe://meridian.local/region//server", "path segment 2: must not be empty"},
		{"spiffe://meridian.local/region/../server", `".." is not allowed`},
		{"spiffe://meridian.local/region/./server", `"." is not allowed`},
		{"spiffe://meridian.local/region/fra/machine", "not a known identity"},
		{"spiffe://meridian.local/edge", "not a known identity"},
		{"spiffe://meridian.local/org/acme/app/shop/service", "not a known identity"},
		{"spiffe://meridian.local/org/acme/app/shop/svc/web", "not a known identity"},
		{"spiffe://meridian.local/org/acme/app/shop/service/web?x=1", "invalid character '?'"},
		{"spiffe://meridian.local/global#frag", "invalid character '#'"},
		{"spiffe://meridian.local/edge/p%2Far", "invalid character '%'"},
		{"spiffe://meridian.local/edge/par is", "invalid character ' '"},
		{"spiffe://meridian.local/unknown/x", "not a known identity"},
		{"spiffe://meridian.local/edge/" + strings.Repeat("a", 129), "longer than 128"},
		{"spiffe://" + strings.Repeat("a", 256) + "/global", "longer than 255"},
		{"spiffe://x/" + strings.Repeat("a/", 1100) + "global", "longer than 2048"},
	}
	for _, tt := range tests {
		name := tt.in
		if len(name) > 60 {
			name = name[:60]
		}
		t.Run(name, func(t *testing.T) {
			id, err := pki.ParseID(tt.in)
			if err == nil {
				t.Fatalf("ParseID(%q) = %+v, want error", tt.in, id)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseID(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "pki: parse spiffe ID") {
				t.Fatalf("error %q does not say what was being parsed", err)
			}
		})
	}
}

func TestIDValidate(t *testing.T) {
	const td = "meridian.local"
	tests := []struct {
		name    string
		id      pki.ID
		wantErr string // "" means valid
	}{
		{"global", pki.GlobalID(td), ""},
		{"zero", pki.ID{}, "trust domain: must not be empty"},
		{"no kind", pki.ID{TrustDomain: td}, "kind: unknown kind 0"},
		{"bad kind", pki.ID{TrustDomain: td, Kind: 42}, "kind: unknown kind 42"},
		{"server without region", pki.ServerID(td, ""), "region: must not be empty"},
		{"machine without machine", pki.MachineID(td, "fra", ""), "machine: must not be empty"},
		{"machine with slash", pki.MachineID(td, "fra", "a/b"), "machine: \"a/b\": invalid character '/'"},
		{"edge dotdot", pki.EdgeID(td, ".."), "edge: \"..\" is not allowed"},
		{"workload without app", pki.WorkloadID(td, "acme", "", "web"), "app: must not be empty"},
		{"global with region", pki.ID{TrustDomain: td, Kind: pki.KindGlobal, Region: "fra"}, "region: must be empty for a global identity"},
		{"server with org", pki.ID{TrustDomain: td, Kind: pki.KindServer, Region: "fra", Org: "acme"}, "org: must be empty for a server identity"},
		{"upper-case trust domain", pki.GlobalID("Meridian"), "trust domain \"Meridian\": invalid character 'M'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.id.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("Validate(%+v) = nil, want error containing %q", tt.id, tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("Validate error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[pki.Kind]string{
		pki.KindGlobal: "global", pki.KindServer: "server", pki.KindMachine: "machine",
		pki.KindEdge: "edge", pki.KindWorkload: "workload", 9: "Kind(9)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}
