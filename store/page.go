package store

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrBadPageToken is returned by the List methods when Page.Token was not
// made by the same list (malformed, tampered with, or from another list).
var ErrBadPageToken = errors.New("invalid page token")

// Page sizes: a Page.Limit of zero or less means DefaultPageLimit; more than
// MaxPageLimit means MaxPageLimit.
const (
	DefaultPageLimit = 50
	MaxPageLimit     = 500
)

// limit is the page size asked for, defaulted and capped.
//
// The List methods page by keyset, after the sort key of the previous
// page's last item, so inserts and deletes between pages neither repeat nor
// skip the items that stay. Sort keys:
//
//	ListOrgs        name
//	ListApps        name
//	ListServices    name
//	ListSecrets     name
//	ListTokens      created_at, then id
//	ListEdgeTokens  name
//	ListRegions     id
//	ListDeployments version, newest first
//
// Text sorts bytewise in both databases.
func (p Page) limit() int {
	switch {
	case p.Limit <= 0:
		return DefaultPageLimit
	case p.Limit > MaxPageLimit:
		return MaxPageLimit
	default:
		return p.Limit
	}
}

// cursor is the sort key of the last item of a page, tagged with the list it
// belongs to. The page token is its JSON in unpadded base64url.
type cursor struct {
	List string `json:"l"`
	S    string `json:"s,omitempty"`
	N    int64  `json:"n,omitempty"`
}

func (c cursor) token() string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // a struct of strings and ints always marshals
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// parseCursor decodes tok for the list named list; ok is false for the
// first page (tok empty).
func parseCursor(list, tok string) (c cursor, ok bool, err error) {
	if tok == "" {
		return cursor{}, false, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return cursor{}, false, fmt.Errorf("store: list %s: page token: %w", list, ErrBadPageToken)
	}
	if err := json.Unmarshal(b, &c); err != nil || c.List != list {
		return cursor{}, false, fmt.Errorf("store: list %s: page token: %w", list, ErrBadPageToken)
	}
	return c, true, nil
}
