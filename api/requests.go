package api

// CreateOrgRequest is the body of POST /v1/organizations.
type CreateOrgRequest struct {
	Name string `json:"name"`
}

// CreateTokenRequest is the body of the token-creating calls.
type CreateTokenRequest struct {
	Name string `json:"name"`
}

// CreateEdgeTokenRequest is the body of POST /v1/edge-tokens. Name is
// required: 1-63 lowercase letters, digits and '-', starting with a
// letter, unique among the installation's edge tokens.
type CreateEdgeTokenRequest struct {
	Name string `json:"name"`
}

// CreateAppRequest is the body of POST /v1/apps.
type CreateAppRequest struct {
	Name string `json:"name"`
}

// PutSecretRequest is the body of PUT /v1/secrets/{name}.
type PutSecretRequest struct {
	Value string `json:"value"`
}

// CreateRegionRequest is the body of POST /v1/regions.
type CreateRegionRequest struct {
	ID        string  `json:"id"`
	Name      string  `json:"name,omitempty"`
	Latitude  float64 `json:"latitude"`
	Longitude float64 `json:"longitude"`
	URL       string  `json:"url"`
}

// UpdateRegionRequest is the body of PATCH /v1/regions/{id}; absent fields
// are left as they are.
type UpdateRegionRequest struct {
	Name      *string  `json:"name,omitempty"`
	Latitude  *float64 `json:"latitude,omitempty"`
	Longitude *float64 `json:"longitude,omitempty"`
	URL       *string  `json:"url,omitempty"`
	Status    *string  `json:"status,omitempty"`
}
