package regionapi

import (
	"math"
	"time"
)

// GeoRTT estimates the round trip between two places from their
// great-circle distance: light in fibre covers about 100 km per
// millisecond of round trip. Edges and meshes rank regions by it until
// they have measured the real one.
func GeoRTT(lat1, lon1, lat2, lon2 float64) time.Duration {
	const earthKm = 6371.0
	rad := math.Pi / 180
	dlat := (lat2 - lat1) * rad
	dlon := (lon2 - lon1) * rad
	a := math.Sin(dlat/2)*math.Sin(dlat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dlon/2)*math.Sin(dlon/2)
	km := 2 * earthKm * math.Asin(math.Min(1, math.Sqrt(a)))
	return time.Duration(km * float64(10*time.Microsecond))
}
