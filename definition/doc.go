// Package definition turns a user's deployment definition (YAML or JSON, the
// api.Definition schema) into validated, per-region api.RegionalDefinitions.
//
// The three steps are:
//
//   - Parse decodes a document strictly: unknown fields, wrong types and
//     wrong shapes are all reported at once, each with its field path
//     ("scalings[0].foo: unknown field").
//   - Validate checks every rule of the definition against Options (the
//     operator's instance type Catalogue, Limits and an optional secret
//     lookup) and reports all violations at once as Errors.
//   - Derive (and DeriveRegion) compute the regional view of a valid
//     definition: a scoped entry ("region:fra") beats an unscoped one, and
//     defaults are filled in. Derivation is a pure function.
//
// # Limits
//
// Documents larger than MaxDocumentSize (1 MiB) are refused, and so are YAML
// aliases (which rules out alias-expansion bombs); nesting depth is bounded
// at 10,000 levels for YAML (by its parser) and JSON, and the decoder never
// descends deeper than the schema. At most MaxErrors (100) errors are reported, then a final line
// says more were found. Lists hold at most MaxListLen (1,000) entries, except
// regions, bounded by Limits.MaxRegions (default 100). Strings are at most
// MaxStringLen (4,096) bytes, except env values, at most MaxEnvValueLen
// (64 KiB). Names and region ids are DNS labels (at most 63 bytes), secret
// names at most 128 bytes.
//
// # Types of scalars
//
// Integer fields accept only YAML/JSON integers ("8080", not "\"8080\"" and not
// 8080.0). String fields accept any scalar and take its literal text, so
// `value: 8080` and `value: true` in an env entry are the strings "8080" and
// "true". A null is the zero value of any field.
package definition
