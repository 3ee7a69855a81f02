package iscsi

import (
	"strconv"
	"strings"
)

// sessionParams are the negotiated operational parameters of a session and
// its (single) connection.
type sessionParams struct {
	HeaderDigest, DataDigest bool
	// MaxXmitDataSegment is the initiator's MaxRecvDataSegmentLength: the
	// largest data segment we may send (Data-In, text, NOP-In).
	MaxXmitDataSegment int
	// MaxRecvDataSegment is ours: the largest segment the initiator may send.
	MaxRecvDataSegment int
	MaxBurstLength     int
	FirstBurstLength   int
	InitialR2T         bool
	ImmediateData      bool
	MaxOutstandingR2T  int
	DataPDUInOrder     bool
	DataSequenceInOrd  bool
	DefaultTime2Wait   int
	DefaultTime2Retain int
}

// defaultSessionParams are the RFC 7143 defaults that apply to keys the
// initiator never offers, capped by the target's limits.
func defaultSessionParams(lim limits) sessionParams {
	return sessionParams{
		MaxXmitDataSegment: 8192,
		MaxRecvDataSegment: lim.MaxRecvDataSegmentLength,
		MaxBurstLength:     min(262144, lim.MaxBurstLength),
		FirstBurstLength:   min(65536, lim.FirstBurstLength),
		InitialR2T:         true,
		ImmediateData:      true,
		MaxOutstandingR2T:  1,
		DataPDUInOrder:     true,
		DataSequenceInOrd:  true,
		DefaultTime2Wait:   2,
		DefaultTime2Retain: 0,
	}
}

// limits are what the target offers.
type limits struct {
	MaxRecvDataSegmentLength int
	MaxBurstLength           int
	FirstBurstLength         int
	MaxOutstandingR2T        int
	InitialR2T               bool
	ImmediateData            bool
	QueueDepth               int
}

// negotiator answers operational keys of one login.
type negotiator struct {
	lim limits
	p   sessionParams
	// seen records keys already answered, so a key repeated in a later
	// login PDU is answered again consistently (never renegotiated).
	seen map[string]string
}

func numericKey(v string, lo, hi int) (int, bool) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return n, true
}

func boolKey(v string) (bool, bool) {
	switch v {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// negotiate answers one operational key and records the outcome. It
// returns the reply value; "" means no reply is sent (declarative keys).
func (n *negotiator) negotiate(k, v string) string {
	if prev, ok := n.seen[k]; ok {
		return prev
	}
	r := n.answer(k, v)
	if n.seen == nil {
		n.seen = map[string]string{}
	}
	n.seen[k] = r
	return r
}

func (n *negotiator) answer(k, v string) string {
	const maxLen = 1<<24 - 1
	switch k {
	case "HeaderDigest", "DataDigest":
		choice := "None"
		found := false
		for _, o := range splitList(v) {
			if o == "CRC32C" || o == "None" {
				choice, found = o, true
				break
			}
		}
		if !found {
			return "Reject"
		}
		if k == "HeaderDigest" {
			n.p.HeaderDigest = choice == "CRC32C"
		} else {
			n.p.DataDigest = choice == "CRC32C"
		}
		return choice
	case "MaxConnections":
		if _, ok := numericKey(v, 1, 65535); !ok {
			return "Reject"
		}
		return "1"
	case "InitialR2T":
		b, ok := boolKey(v)
		if !ok {
			return "Reject"
		}
		n.p.InitialR2T = b || n.lim.InitialR2T
		return yesNo(n.p.InitialR2T)
	case "ImmediateData":
		b, ok := boolKey(v)
		if !ok {
			return "Reject"
		}
		n.p.ImmediateData = b && n.lim.ImmediateData
		return yesNo(n.p.ImmediateData)
	case "MaxRecvDataSegmentLength":
		x, ok := numericKey(v, 512, maxLen)
		if !ok {
			return "Reject"
		}
		n.p.MaxXmitDataSegment = x
		return ""
	case "MaxBurstLength":
		x, ok := numericKey(v, 512, maxLen)
		if !ok {
			return "Reject"
		}
		n.p.MaxBurstLength = min(x, n.lim.MaxBurstLength)
		n.p.FirstBurstLength = min(n.p.FirstBurstLength, n.p.MaxBurstLength)
		return strconv.Itoa(n.p.MaxBurstLength)
	case "FirstBurstLength":
		x, ok := numericKey(v, 512, maxLen)
		if !ok {
			return "Reject"
		}
		n.p.FirstBurstLength = min(x, n.lim.FirstBurstLength, n.p.MaxBurstLength)
		return strconv.Itoa(n.p.FirstBurstLength)
	case "DefaultTime2Wait":
		x, ok := numericKey(v, 0, 3600)
		if !ok {
			return "Reject"
		}
		n.p.DefaultTime2Wait = max(x, 2)
		return strconv.Itoa(n.p.DefaultTime2Wait)
	case "DefaultTime2Retain":
		if _, ok := numericKey(v, 0, 3600); !ok {
			return "Reject"
		}
		n.p.DefaultTime2Retain = 0 // ERL 0: nothing is retained
		return "0"
	case "MaxOutstandingR2T":
		x, ok := numericKey(v, 1, 65535)
		if !ok {
			return "Reject"
		}
		n.p.MaxOutstandingR2T = min(x, n.lim.MaxOutstandingR2T)
		return strconv.Itoa(n.p.MaxOutstandingR2T)
	case "DataPDUInOrder", "DataSequenceInOrder":
		if _, ok := boolKey(v); !ok {
			return "Reject"
		}
		// Result is OR; the target requires in-order data, so always Yes.
		return "Yes"
	case "ErrorRecoveryLevel":
		if _, ok := numericKey(v, 0, 2); !ok {
			return "Reject"
		}
		return "0"
	case "IFMarker", "OFMarker":
		if _, ok := boolKey(v); !ok {
			return "Reject"
		}
		return "No"
	case "IFMarkInt", "OFMarkInt":
		return "Irrelevant"
	case "iSCSIProtocolLevel":
		// RFC 7144: the lower of the two levels; this target speaks
		// RFC 7143 (level 1).
		x, ok := numericKey(v, 0, 31)
		if !ok {
			return "Reject"
		}
		return strconv.Itoa(min(x, 1))
	case "InitiatorAlias", "SessionType", "InitiatorName", "TargetName":
		return "" // declarative, handled by the login code
	}
	if strings.HasPrefix(k, "X-") || strings.HasPrefix(k, "X#") {
		return "NotUnderstood"
	}
	return "NotUnderstood"
}

// finish enforces cross-key rules after the operational stage.
func (n *negotiator) finish() sessionParams {
	p := n.p
	if p.FirstBurstLength > p.MaxBurstLength {
		p.FirstBurstLength = p.MaxBurstLength
	}
	if p.MaxXmitDataSegment < 512 {
		p.MaxXmitDataSegment = 512
	}
	return p
}
