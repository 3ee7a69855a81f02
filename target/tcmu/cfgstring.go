package tcmu

import (
	"fmt"
	"strconv"
	"strings"
)

const uioNamePrefix = "tcm-user"

// uioName is the decoded name the kernel gives a TCMU device's UIO node
// ("tcm-user/<hba>/<object>/<subtype>/<cfgstring>"), which the ADDED_DEVICE
// notification and /sys/class/uio/uio<N>/name both carry.
type uioName struct {
	hba     uint32 // configfs core/user_<hba>
	object  string // configfs core/user_<hba>/<object>
	subtype string
	cfg     string // what the user gave targetcli as cfgstring
}

// parseUIOName decodes a TCMU UIO device name. The cfgstring may itself
// contain slashes (targetcli passes paths through unchanged).
func parseUIOName(s string) (uioName, error) {
	parts := strings.SplitN(s, "/", 5)
	if len(parts) < 4 || parts[0] != uioNamePrefix {
		return uioName{}, fmt.Errorf("tcmu: %q is not a TCMU device name (want %s/<hba>/<name>/<subtype>/<cfgstring>)", s, uioNamePrefix)
	}
	hba, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return uioName{}, fmt.Errorf("tcmu: device name %q: HBA %q is not a number", s, parts[1])
	}
	if parts[2] == "" || parts[3] == "" {
		return uioName{}, fmt.Errorf("tcmu: device name %q has an empty object name or subtype", s)
	}
	n := uioName{hba: uint32(hba), object: parts[2], subtype: parts[3]}
	if len(parts) == 5 {
		n.cfg = parts[4]
	}
	return n, nil
}

// configDir is the device's configfs directory below the core directory.
func (n uioName) configDir() string { return fmt.Sprintf("user_%d/%s", n.hba, n.object) }

func (n uioName) String() string {
	return fmt.Sprintf("user_%d/%s (%s/%s)", n.hba, n.object, n.subtype, n.cfg)
}

// splitDevConfig splits a kernel dev_config ("<subtype>/<cfgstring>", as
// targetcli's CheckConfig and RECONFIG_DEVICE carry it) into its parts.
func splitDevConfig(s string) (subtype, cfg string, err error) {
	subtype, cfg, ok := strings.Cut(s, "/")
	if !ok || subtype == "" {
		return "", "", fmt.Errorf("tcmu: configuration %q is not <subtype>/<cfgstring>", s)
	}
	return subtype, cfg, nil
}

// validateCfgstring applies the rules every cachelun cfgstring obeys,
// whatever volume it names: non-empty, printable, no NUL or newline (the
// kernel stores it in a fixed buffer and shows it in configfs lines), and no
// ':' (rtslib forbids it in dev_config).
func validateCfgstring(cfg string) error {
	if cfg == "" {
		return fmt.Errorf("empty cfgstring: give the volume name, e.g. cfgstring=db1")
	}
	if len(cfg) > maxCfgstringLen {
		return fmt.Errorf("cfgstring is %d bytes, at most %d allowed", len(cfg), maxCfgstringLen)
	}
	for _, r := range cfg {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("cfgstring contains control character %#02x", r)
		}
		if r == ':' {
			return fmt.Errorf("cfgstring may not contain ':'")
		}
	}
	return nil
}

// maxCfgstringLen leaves room for "<subtype>/" in the kernel's 256-byte
// TCMU_CONFIG_LEN buffer.
const maxCfgstringLen = 200
