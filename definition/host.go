package definition

import "fmt"

// MaxOrgNameLen bounds organization names below a DNS label's 63
// characters, so that every organization's apps have room in their public
// host's first label, <app>-<org>: at least 62-MaxOrgNameLen characters.
const MaxOrgNameLen = 32

// CheckOrgName checks an organization's name: a DNS label of at most
// MaxOrgNameLen characters.
func CheckOrgName(org string) error {
	if !ValidLabel(org) {
		return fmt.Errorf("%s is not a valid name: use 1-%d lowercase letters, digits and '-', starting with a letter", Quote(org), MaxOrgNameLen)
	}
	if len(org) > MaxOrgNameLen {
		return fmt.Errorf("%s is %d characters long; an organization's name has at most %d, so that its apps' public host names fit DNS",
			Quote(org), len(org), MaxOrgNameLen)
	}
	return nil
}

// AppHostLabel returns the first label of an app's public host name at
// the edges, <app>-<org> (under the installation's domain, so that one
// wildcard certificate covers every app). It fails when app is not a DNS
// label or the label would exceed DNS's 63 characters; the error says how
// long app may be in org.
func AppHostLabel(app, org string) (string, error) {
	if !ValidLabel(app) {
		return "", fmt.Errorf("%s is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter", Quote(app))
	}
	label := app + "-" + org
	if len(label) > 63 {
		return "", fmt.Errorf("%s is %d characters long: its public host's first label %s-%s would be %d characters, over DNS's 63; app names in organization %s have at most %d",
			Quote(app), len(app), Truncate(app), org, len(label), org, max(62-len(org), 0))
	}
	return label, nil
}
