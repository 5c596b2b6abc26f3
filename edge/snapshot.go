package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/meridian-run/meridian/regionapi"
)

// Files in the edge's state directory.
const (
	// SnapshotFile holds the last good feed of every region.
	SnapshotFile = "snapshot.json"
	// RegionsFile caches the region list last read from global.
	RegionsFile = "regions.json"
)

// snapshotVersion is the snapshot format's version.
const snapshotVersion = 1

// Snapshot is the routing state on disk: each region's last good feed.
type Snapshot struct {
	Version  int              `json:"version"`
	Location string           `json:"location"`
	SavedAt  time.Time        `json:"saved_at"`
	Regions  []SnapshotRegion `json:"regions"`
}

// SnapshotRegion is one region's last good feed.
type SnapshotRegion struct {
	Region   Region                  `json:"region"`
	Revision int64                   `json:"revision"`
	Received time.Time               `json:"received"`
	Services []regionapi.FeedService `json:"services"`
}

// WriteSnapshot writes a snapshot to dir atomically (a temporary file,
// synced, renamed over the old one).
func WriteSnapshot(dir string, s Snapshot) error {
	s.Version = snapshotVersion
	return writeJSONAtomic(filepath.Join(dir, SnapshotFile), s)
}

// ReadSnapshot reads dir's snapshot. A missing snapshot is an empty one
// with no error.
func ReadSnapshot(dir string) (Snapshot, error) {
	var s Snapshot
	err := readJSON(filepath.Join(dir, SnapshotFile), &s)
	if errors.Is(err, fs.ErrNotExist) {
		return Snapshot{}, nil
	}
	if err != nil {
		return Snapshot{}, err
	}
	if s.Version != snapshotVersion {
		return Snapshot{}, fmt.Errorf("edge: %s: version %d, this edge reads %d", filepath.Join(dir, SnapshotFile), s.Version, snapshotVersion)
	}
	return s, nil
}

// writeRegions caches the region list.
func writeRegions(dir string, list []Region) error {
	return writeJSONAtomic(filepath.Join(dir, RegionsFile), list)
}

// readRegions reads the cached region list (none when missing).
func readRegions(dir string) ([]Region, error) {
	var list []Region
	err := readJSON(filepath.Join(dir, RegionsFile), &list)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return list, err
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("edge: %s: %w", path, err)
	}
	return nil
}

// writeJSONAtomic replaces path with v's JSON: a temporary file in the
// same directory, synced, then renamed; the directory is synced after.
func writeJSONAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("edge: encoding %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("edge: writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("edge: syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
