package iscsi

import (
	"slices"
)

// handleText answers Text Requests in full-feature phase: SendTargets
// (discovery and normal sessions), with long answers split over several
// PDUs the initiator fetches with its TTT.
func (c *conn) handleText(h *pduHeader) error {
	data, err := c.readPayload(h)
	if err != nil {
		return err
	}
	b := &h.bhs
	if ok, _ := c.acceptCmdSN(b.u32(offCmdSN), b.immediate(), false); !ok {
		return nil
	}
	itt := b.itt()
	ttt := b.u32(offTTT)
	if ttt != reservedTag {
		if ttt != c.textTTT {
			c.reject(h, rejectInvalidField)
			return nil
		}
		if c.textOut != nil {
			c.sendText(itt, c.textOut)
			return nil
		}
	} else {
		c.textOut = nil
		if ttt == reservedTag && len(c.textIn) > 0 && b.flags()&0x40 == 0 && len(data) == 0 {
			c.textIn = c.textIn[:0]
		}
	}
	if len(c.textIn)+len(data) > maxTextBytes {
		c.textIn = c.textIn[:0]
		c.reject(h, rejectInvalidField)
		return nil
	}
	c.textIn = append(c.textIn, data...)
	if b.flags()&0x40 != 0 { // more request text follows
		c.textTTT = c.newTextTTT()
		c.textResponse(itt, c.textTTT, false, nil)
		return nil
	}
	kvs, err := parseText(c.textIn)
	c.textIn = c.textIn[:0]
	if err != nil {
		c.reject(h, rejectInvalidField)
		return nil
	}
	var tb textBuilder
	for _, e := range kvs {
		switch e.Key {
		case "SendTargets":
			c.sendTargets(&tb, e.Value)
		case "MaxRecvDataSegmentLength", "InitiatorAlias":
			// Declarative; the connection keeps its login values.
		default:
			tb.add(e.Key, "NotUnderstood")
		}
	}
	c.sendText(itt, tb.bytes())
	return nil
}

func (c *conn) newTextTTT() uint32 {
	c.tmu.Lock()
	defer c.tmu.Unlock()
	c.nextTTT++
	if c.nextTTT == reservedTag {
		c.nextTTT = 0
	}
	return c.nextTTT
}

// sendText sends payload, or its first MaxXmitDataSegment bytes with the
// C bit and a TTT for the initiator to ask for the rest.
func (c *conn) sendText(itt uint32, payload []byte) {
	max := c.params.MaxXmitDataSegment
	if len(payload) <= max {
		c.textOut = nil
		c.textResponse(itt, reservedTag, true, payload)
		return
	}
	c.textOut = slices.Clone(payload[max:])
	c.textTTT = c.newTextTTT()
	c.textResponse(itt, c.textTTT, false, payload[:max])
}

func (c *conn) textResponse(itt, ttt uint32, final bool, data []byte) {
	var r bhs
	r[0] = opTextResp
	if final {
		r[1] = 0x80
	} else if len(data) > 0 {
		r[1] = 0x40 // C: more text follows
	}
	r.putU32(16, itt)
	r.putU32(offTTT, ttt)
	c.send(outItem{kind: outStatus, h: r, data: slices.Clone(data)})
}

// sendTargets lists the targets this initiator may log in to: "All" (any
// target), a target name, or "" (this session's target).
func (c *conn) sendTargets(tb *textBuilder, v string) {
	s := c.srv
	s.mu.Lock()
	var list []*targetEntry
	switch {
	case v == "All":
		for _, e := range s.targets {
			list = append(list, e)
		}
	case v == "":
		if e := c.target.Load(); e != nil {
			if cur := s.targets[e.cfg.Name]; cur != nil {
				list = append(list, cur)
			}
		}
	default:
		if e := s.targets[v]; e != nil {
			list = append(list, e)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(list, func(a, b *targetEntry) int {
		switch {
		case a.cfg.Name < b.cfg.Name:
			return -1
		case a.cfg.Name > b.cfg.Name:
			return 1
		}
		return 0
	})
	for _, e := range list {
		if !e.allows(c.initiator) {
			continue
		}
		addrs := e.addresses(c.localAddr)
		if len(addrs) == 0 {
			continue
		}
		tb.add("TargetName", e.cfg.Name)
		for _, a := range addrs {
			tb.add("TargetAddress", a)
		}
	}
}
