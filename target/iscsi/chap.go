package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"hash"
	"strconv"
	"strings"
)

// CHAP holds the credentials of one-way or mutual CHAP (RFC 1994 as used by
// RFC 7143 §12.1.3). The initiator proves it knows Secret for User; with
// MutualUser set, the target then proves it knows MutualSecret.
type CHAP struct {
	User, Secret             string
	MutualUser, MutualSecret string
}

func (c *CHAP) mutual() bool { return c != nil && c.MutualUser != "" }

func (c *CHAP) equal(o *CHAP) bool {
	if c == nil || o == nil {
		return c == o
	}
	return *c == *o
}

// CHAP algorithm identifiers (IANA "PPP Authentication Algorithms").
const (
	chapMD5    = 5
	chapSHA1   = 6
	chapSHA256 = 7
)

// chapPreference is the order the target picks in when the initiator offers
// several algorithms: strongest first.
var chapPreference = [...]int{chapSHA256, chapSHA1, chapMD5}

func chapHash(alg int) func() hash.Hash {
	switch alg {
	case chapMD5:
		return md5.New
	case chapSHA1:
		return sha1.New
	case chapSHA256:
		return sha256.New
	}
	return nil
}

// chooseCHAPAlgorithm picks the strongest algorithm in an offered CHAP_A list.
func chooseCHAPAlgorithm(offer string) (int, bool) {
	offered := map[int]bool{}
	for _, s := range splitList(offer) {
		if n, err := strconv.Atoi(s); err == nil {
			offered[n] = true
		}
	}
	for _, a := range chapPreference {
		if offered[a] {
			return a, true
		}
	}
	return 0, false
}

// chapResponse computes H(id || secret || challenge).
func chapResponse(alg int, id byte, secret string, challenge []byte) []byte {
	h := chapHash(alg)()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

var errCHAPEncoding = errors.New("iscsi: bad CHAP binary value")

// decodeCHAPBinary decodes "0x<hex>" or "0b<base64>" (RFC 7143 §6.1).
func decodeCHAPBinary(v string) ([]byte, error) {
	switch {
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		b, err := hex.DecodeString(s)
		if err != nil || len(b) == 0 {
			return nil, errCHAPEncoding
		}
		return b, nil
	case strings.HasPrefix(v, "0b") || strings.HasPrefix(v, "0B"):
		b, err := base64.StdEncoding.DecodeString(v[2:])
		if err != nil || len(b) == 0 {
			return nil, errCHAPEncoding
		}
		return b, nil
	}
	return nil, errCHAPEncoding
}

func encodeCHAPBinary(b []byte) string { return "0x" + hex.EncodeToString(b) }

// chapState is the target side of one CHAP exchange.
type chapState struct {
	creds     *CHAP
	alg       int
	id        byte
	challenge []byte
}

// newChallenge picks the identifier and a challenge as long as the hash
// output (at least 16 bytes).
func (s *chapState) newChallenge(alg int) error {
	s.alg = alg
	size := max(chapHash(alg)().Size(), 16)
	buf := make([]byte, size+1)
	if _, err := rand.Read(buf); err != nil {
		return err
	}
	s.id = buf[0]
	s.challenge = buf[1:]
	return nil
}

var (
	errCHAPFailed   = errors.New("iscsi: CHAP authentication failed")
	errCHAPReflect  = errors.New("iscsi: CHAP challenge reflected")
	errCHAPMissing  = errors.New("iscsi: CHAP keys missing")
	errCHAPNoMutual = errors.New("iscsi: mutual CHAP requested but not configured")
)

// verify checks the initiator's CHAP_N/CHAP_R and, if it sent CHAP_I/CHAP_C,
// computes the mutual response. It returns the keys to send back.
func (s *chapState) verify(kvs []kv) ([]kv, error) {
	name, okN := lookup(kvs, "CHAP_N")
	resp, okR := lookup(kvs, "CHAP_R")
	if !okN || !okR {
		return nil, errCHAPMissing
	}
	got, err := decodeCHAPBinary(resp)
	if err != nil {
		return nil, err
	}
	want := chapResponse(s.alg, s.id, s.creds.Secret, s.challenge)
	userOK := subtle.ConstantTimeCompare([]byte(name), []byte(s.creds.User)) == 1
	if !userOK || subtle.ConstantTimeCompare(got, want) != 1 {
		return nil, errCHAPFailed
	}
	mi, okI := lookup(kvs, "CHAP_I")
	mc, okC := lookup(kvs, "CHAP_C")
	if !okI && !okC {
		// One-way CHAP: the initiator does not ask the target to prove
		// itself, even when mutual credentials are configured.
		return nil, nil
	}
	if okI != okC {
		return nil, errCHAPMissing
	}
	if !s.creds.mutual() {
		return nil, errCHAPNoMutual
	}
	id, err := strconv.ParseUint(mi, 0, 8)
	if err != nil {
		return nil, errCHAPEncoding
	}
	ch, err := decodeCHAPBinary(mc)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(ch, s.challenge) == 1 {
		return nil, errCHAPReflect
	}
	r := chapResponse(s.alg, byte(id), s.creds.MutualSecret, ch)
	return []kv{{"CHAP_N", s.creds.MutualUser}, {"CHAP_R", encodeCHAPBinary(r)}}, nil
}
