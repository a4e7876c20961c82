"""The simulated platform's business rules: visits, fees, settlements, cancellations,
reversals and reconciliation, over the SQLite store.

Every method runs inside a store transaction opened by the caller and raises ``Reject`` with
the platform's message when it refuses (the caller answers ``infcode = -1``). Both the
national JSON service and the regional SOAP service call these, so a person's balance is
one balance whichever interface moved it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from simulators.insurance.catalogue import CATALOGUE
from simulators.insurance.outputs import age, fee_result, now_text
from simulators.insurance.policy import (
    ZERO,
    Figures,
    PricedLine,
    money,
    price_line,
    settle_figures,
)
from simulators.insurance.store import Store

SETTLE_INFNOS = ("2207", "2304")
CANCEL_INFNOS = ("2208", "2305")


class Reject(Exception):
    """The platform refuses the request; the text becomes ``err_msg``."""


def dec(value: Any, where: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise Reject(f"{where}: not a number: {value!r}") from None
    if not result.is_finite():
        raise Reject(f"{where}: not a finite number")
    return result


@dataclass(frozen=True, slots=True)
class Computed:
    visit: sqlite3.Row
    person: sqlite3.Row
    fees: list[sqlite3.Row]
    figures: Figures


class Platform:
    def __init__(self, store: Store, *, admvs: str = "440300") -> None:
        self.store = store
        self.admvs = admvs

    # -- ids -------------------------------------------------------------------------------

    def _id(self, letter: str) -> str:
        n = self.store.next_number(letter)
        return f"{self.admvs}{letter}{datetime.now():%Y%m%d}{n:08d}"

    # -- sign-in -----------------------------------------------------------------------------

    def sign_in(self, opter: str) -> dict[str, str]:
        sign_no = self._id("Q")
        sign_time = now_text()
        self.store.conn.execute(
            "INSERT INTO signin VALUES (?, ?, ?, 1)", (sign_no, opter, sign_time)
        )
        return {"sign_time": sign_time, "sign_no": sign_no}

    def sign_out(self, sign_no: str) -> None:
        self.store.conn.execute("UPDATE signin SET valid = 0 WHERE sign_no = ?", (sign_no,))

    def check_sign(self, sign_no: str) -> None:
        row = self.store.one("SELECT valid FROM signin WHERE sign_no = ?", sign_no)
        if row is None or not row["valid"]:
            raise Reject("签到编号无效或已过期，请重新签到 (sign_no invalid or expired)")

    def expire_sign_ins(self) -> int:
        return self.store.conn.execute("UPDATE signin SET valid = 0 WHERE valid = 1").rowcount

    # -- persons -----------------------------------------------------------------------------

    def find_person(self, cert_type: str, cert_no: str) -> sqlite3.Row:
        column = {"01": "evoucher", "02": "certno", "03": "ss_card_no"}.get(cert_type)
        if column is None:
            raise Reject(f"mdtrt_cert_type {cert_type!r} 不支持 (expected 01, 02 or 03)")
        row = self.store.one(f"SELECT * FROM person WHERE {column} = ?", cert_no)  # noqa: S608
        if row is None:
            raise Reject("未查询到人员信息 (no insured person with this certificate)")
        return row

    def person(self, psn_no: str) -> sqlite3.Row:
        row = self.store.one("SELECT * FROM person WHERE psn_no = ?", psn_no)
        if row is None:
            raise Reject(f"人员编号不存在 (unknown psn_no {psn_no})")
        return row

    @staticmethod
    def _active(person: sqlite3.Row) -> None:
        if person["psn_insu_stas"] != "1":
            raise Reject("人员参保状态异常(暂停参保)，不能享受医保待遇 (insurance suspended)")

    def person_info(self, person: sqlite3.Row) -> dict[str, Any]:
        return {
            "baseinfo": {
                "psn_no": person["psn_no"], "psn_cert_type": "01", "certno": person["certno"],
                "psn_name": person["name"], "gend": person["gend"], "naty": "01",
                "brdy": person["brdy"], "age": Decimal(age(person["brdy"])),
            },
            "insuinfo": [{
                "balc": Decimal(person["balc"]), "insutype": person["insutype"],
                "psn_type": person["psn_type"], "psn_insu_stas": person["psn_insu_stas"],
                "psn_insu_date": "2010-01-01", "paus_insu_date": None,
                "cvlserv_flag": person["cvlserv_flag"],
                "insuplc_admdvs": person["insuplc_admdvs"], "emp_name": person["emp_name"],
            }],
            "idetinfo": [],
        }

    # -- visits ------------------------------------------------------------------------------

    def open_visit(
        self, person: sqlite3.Row, *, insutype: str, kind: str, med_type: str, begntime: str,
        ipt_otp_no: str, dept_code: str, dise_codg: str, cert_type: str, source: str,
    ) -> str:
        self._active(person)
        if insutype != person["insutype"]:
            raise Reject(f"险种类型 {insutype} 与参保信息不符 (person holds {person['insutype']})")
        mdtrt_id = self._id("M")
        self.store.conn.execute(
            "INSERT INTO visit VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (mdtrt_id, person["psn_no"], insutype, kind, med_type, begntime, "", ipt_otp_no,
             dept_code, dise_codg, "open", source, cert_type),
        )
        return mdtrt_id

    def visit(self, mdtrt_id: str, psn_no: str, kind: str | None = None) -> sqlite3.Row:
        row = self.store.one("SELECT * FROM visit WHERE mdtrt_id = ?", mdtrt_id)
        if row is None:
            raise Reject(f"就诊ID不存在 (unknown mdtrt_id {mdtrt_id})")
        if row["psn_no"] != psn_no:
            raise Reject("就诊ID与人员编号不符 (mdtrt_id belongs to another person)")
        if row["status"] == "cancelled":
            raise Reject("就诊已撤销 (visit cancelled)")
        if kind is not None and row["kind"] != kind:
            raise Reject(f"就诊类型不符 (visit is {row['kind']}, transaction is for {kind})")
        return row

    def cancel_visit(self, psn_no: str, mdtrt_id: str) -> None:
        self.visit(mdtrt_id, psn_no)
        if self.store.one("SELECT 1 FROM fee WHERE mdtrt_id = ?", mdtrt_id):
            raise Reject("存在费用明细，请先撤销费用 (cancel the fees first)")
        self.store.conn.execute(
            "UPDATE visit SET status = 'cancelled' WHERE mdtrt_id = ?", (mdtrt_id,)
        )

    def update_visit(self, mdtrt_id: str, psn_no: str, med_type: str, dise_codg: str) -> None:
        self.visit(mdtrt_id, psn_no, "otp")
        self.store.conn.execute(
            "UPDATE visit SET med_type = ?, dise_codg = ? WHERE mdtrt_id = ?",
            (med_type, dise_codg, mdtrt_id),
        )

    def discharge(self, mdtrt_id: str, psn_no: str, endtime: str, dise_codg: str) -> None:
        row = self.visit(mdtrt_id, psn_no, "ipt")
        if row["status"] == "discharged":
            raise Reject("已办理出院登记 (already discharged)")
        self.store.conn.execute(
            "UPDATE visit SET status = 'discharged', endtime = ?, dise_codg = ?"
            " WHERE mdtrt_id = ?", (endtime, dise_codg, mdtrt_id),
        )

    # -- fees --------------------------------------------------------------------------------

    def upload_fees(
        self, lines: list[dict[str, Any]], kind: str, msgid: str
    ) -> list[dict[str, Any]]:
        first = lines[0]
        visit = self.visit(str(first["mdtrt_id"]), str(first["psn_no"]), kind)
        person = self.person(visit["psn_no"])
        results = []
        for i, line in enumerate(lines):
            where = f"feedetail[{i}]"
            if line["mdtrt_id"] != visit["mdtrt_id"] or line["psn_no"] != visit["psn_no"]:
                raise Reject(f"{where}: 一次上传只能包含同一就诊的费用 (one visit per upload)")
            code = str(line["med_list_codg"])
            item = CATALOGUE.get(code)
            if item is None:
                raise Reject(f"{where}: 医保目录编码 {code} 不存在 (unknown catalogue code)")
            cnt = dec(line["cnt"], f"{where}.cnt")
            pric = dec(line["pric"], f"{where}.pric")
            sumamt = dec(line["det_item_fee_sumamt"], f"{where}.det_item_fee_sumamt")
            if cnt <= 0 or pric < 0:
                raise Reject(f"{where}: cnt must be positive and pric not negative")
            if abs(money(cnt * pric) - sumamt) > Decimal("0.01"):
                raise Reject(
                    f"{where}.det_item_fee_sumamt {sumamt} != cnt × pric {money(cnt * pric)}"
                )
            chrg_bchno = str(line.get("chrg_bchno") or "")
            digest = hashlib.sha256(
                f"{code}|{cnt}|{pric}|{sumamt}|{chrg_bchno}".encode()
            ).hexdigest()[:32]
            sn = str(line["feedetl_sn"])
            existing = self.store.one(
                "SELECT * FROM fee WHERE mdtrt_id = ? AND feedetl_sn = ?", visit["mdtrt_id"], sn
            )
            if existing is not None:
                if existing["digest"] != digest:
                    raise Reject(f"{where}: feedetl_sn {sn} 重复 (already uploaded differently)")
                results.append(fee_result(existing))
                continue
            priced = price_line(item, person["insutype"], cnt, pric, sumamt)
            self.store.conn.execute(
                "INSERT INTO fee VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (visit["mdtrt_id"], sn, chrg_bchno, code, str(line["medins_list_codg"]),
                 str(cnt), str(pric), str(sumamt), str(priced.uplmt), str(priced.selfpay_prop),
                 str(priced.fulamt_ownpay_amt), str(priced.overlmt_amt),
                 str(priced.preselfpay_amt), str(priced.inscp_scp_amt), item.chrgitm_lv,
                 item.med_chrgitm_type, str(line["fee_ocur_time"]), digest, None, msgid),
            )
            row = self.store.one(
                "SELECT * FROM fee WHERE mdtrt_id = ? AND feedetl_sn = ?", visit["mdtrt_id"], sn
            )
            assert row is not None
            results.append(fee_result(row))
        return results

    def cancel_fees(self, mdtrt_id: str, psn_no: str, *, chrg_bchno: str | None = None,
                    feedetl_sn: str | None = None) -> int:
        self.visit(mdtrt_id, psn_no)
        args: tuple[str, ...]
        if chrg_bchno is not None:
            where, args = "mdtrt_id = ? AND chrg_bchno = ?", (mdtrt_id, chrg_bchno)
        elif feedetl_sn and feedetl_sn != "0000":
            where, args = "mdtrt_id = ? AND feedetl_sn = ?", (mdtrt_id, feedetl_sn)
        else:
            where, args = "mdtrt_id = ?", (mdtrt_id,)
        rows = self.store.all(f"SELECT setl_id FROM fee WHERE {where}", *args)  # noqa: S608
        if not rows:
            raise Reject("未查询到可撤销的费用明细 (no such fee lines)")
        if any(r["setl_id"] for r in rows):
            raise Reject("费用已结算，请先撤销结算 (cancel the settlement first)")
        return self.store.conn.execute(f"DELETE FROM fee WHERE {where}", args).rowcount  # noqa: S608

    # -- settlement --------------------------------------------------------------------------

    def compute(self, *, mdtrt_id: str, psn_no: str, kind: str, insutype: str,
                medfee_sumamt: Decimal | None, use_account: bool,
                chrg_bchno: str | None = None) -> Computed:
        visit = self.visit(mdtrt_id, psn_no, kind)
        person = self.person(psn_no)
        self._active(person)
        if insutype != visit["insutype"]:
            raise Reject(f"险种类型 {insutype} 与就诊登记不符 ({visit['insutype']})")
        if chrg_bchno:
            fees = self.store.all(
                "SELECT * FROM fee WHERE mdtrt_id = ? AND chrg_bchno = ? AND setl_id IS NULL",
                mdtrt_id, chrg_bchno,
            )
        else:
            fees = self.store.all(
                "SELECT * FROM fee WHERE mdtrt_id = ? AND setl_id IS NULL", mdtrt_id
            )
        if not fees:
            raise Reject("没有待结算的费用明细 (no unsettled fees for this visit/batch)")
        lines = [
            PricedLine(Decimal(f["sumamt"]), Decimal(f["uplmt"]), Decimal(f["selfpay_prop"]),
                       Decimal(f["fulamt"]), Decimal(f["overlmt"]), Decimal(f["preselfpay"]),
                       Decimal(f["inscp"]))
            for f in fees
        ]
        figures = settle_figures(
            lines, insutype=insutype, psn_type=person["psn_type"], kind=kind,
            balance=Decimal(person["balc"]), use_account=use_account,
        )
        if medfee_sumamt is not None and figures.medfee_sumamt != medfee_sumamt:
            raise Reject(
                f"medfee_sumamt {medfee_sumamt} 与上传费用总额 {figures.medfee_sumamt} 不符"
                " (does not match the uploaded fees)"
            )
        return Computed(visit, person, fees, figures)

    def settle(self, computed: Computed, *, claimed: dict[str, Decimal], msgid: str,
               infno: str, mid_setl_flag: str, invono: str, chrg_bchno: str, med_type: str,
               cert_type: str, source: str) -> sqlite3.Row:
        f = computed.figures
        for name in ("fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt"):
            if name in claimed and claimed[name] != getattr(f, name):
                raise Reject(
                    f"{name} {claimed[name]} 与平台计算值 {getattr(f, name)} 不符"
                    " (pre-settle again)"
                )
        visit = computed.visit
        kind = visit["kind"]
        if kind == "ipt" and visit["status"] != "discharged" and mid_setl_flag != "1":
            raise Reject("未办理出院登记，不能出院结算 (discharge first, or set mid_setl_flag=1)")
        person = computed.person
        setl_id = self._id("S")
        self.store.conn.execute(
            "INSERT INTO settlement VALUES"
            " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (setl_id, visit["mdtrt_id"], person["psn_no"], visit["insutype"], kind,
             "11" if kind == "otp" else "21", person["insuplc_admdvs"], "settle", "", "1",
             msgid, infno, now_text(), chrg_bchno, mid_setl_flag, invono,
             med_type or visit["med_type"], cert_type, str(f.medfee_sumamt),
             str(f.fulamt_ownpay_amt), str(f.overlmt_selfpay), str(f.preselfpay_amt),
             str(f.inscp_scp_amt), str(f.act_pay_dedc), str(f.hifp_pay),
             str(f.fund_pay_sumamt), str(f.psn_part_amt), str(f.acct_pay),
             str(f.psn_cash_pay), str(f.balc), str(f.fund_ratio), source),
        )
        self.store.conn.executemany(
            "UPDATE fee SET setl_id = ? WHERE mdtrt_id = ? AND feedetl_sn = ?",
            [(setl_id, fee["mdtrt_id"], fee["feedetl_sn"]) for fee in computed.fees],
        )
        self.store.conn.execute(
            "UPDATE person SET balc = ? WHERE psn_no = ?", (str(f.balc), person["psn_no"])
        )
        row = self.store.one("SELECT * FROM settlement WHERE setl_id = ?", setl_id)
        assert row is not None
        return row

    def _undo(self, original: sqlite3.Row) -> None:
        """Give the account back what the settlement took and free its fees."""
        person = self.person(original["psn_no"])
        balc = Decimal(person["balc"]) + Decimal(original["acct_pay"])
        self.store.conn.execute(
            "UPDATE person SET balc = ? WHERE psn_no = ?", (str(balc), person["psn_no"])
        )
        self.store.conn.execute("UPDATE fee SET setl_id = NULL WHERE setl_id = ?",
                                (original["setl_id"],))

    def cancel(self, *, setl_id: str, mdtrt_id: str, psn_no: str, kind: str, msgid: str,
               infno: str) -> sqlite3.Row:
        original = self.store.one(
            "SELECT * FROM settlement WHERE setl_id = ? AND record = 'settle'", setl_id
        )
        if original is None or original["vali_flag"] != "1":
            raise Reject("结算记录不存在或已撤销 (no valid settlement with this setl_id)")
        if original["mdtrt_id"] != mdtrt_id or original["psn_no"] != psn_no:
            raise Reject("结算ID与就诊ID/人员编号不符 (setl_id does not belong to this visit)")
        if original["kind"] != kind:
            raise Reject("结算类型不符 (use 2208 for outpatient, 2305 for inpatient)")
        self._undo(original)
        person = self.person(psn_no)
        cancel_id = self._id("S")
        negated = {
            k: str(-Decimal(original[k]))
            for k in ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                      "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "fund_pay_sumamt",
                      "psn_part_amt", "acct_pay", "psn_cash_pay")
        }
        self.store.conn.execute(
            "INSERT INTO settlement VALUES"
            " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (cancel_id, mdtrt_id, psn_no, original["insutype"], kind, original["clr_type"],
             original["setl_optins"], "cancel", setl_id, "1", msgid, infno, now_text(),
             original["chrg_bchno"], original["mid_setl_flag"], original["invono"],
             original["med_type"], original["mdtrt_cert_type"], negated["medfee_sumamt"],
             negated["fulamt_ownpay_amt"], negated["overlmt_selfpay"],
             negated["preselfpay_amt"], negated["inscp_scp_amt"], negated["act_pay_dedc"],
             negated["hifp_pay"], negated["fund_pay_sumamt"], negated["psn_part_amt"],
             negated["acct_pay"], negated["psn_cash_pay"], person["balc"],
             original["fund_ratio"], original["source"]),
        )
        self.store.conn.execute(
            "UPDATE settlement SET vali_flag = '0' WHERE setl_id = ?", (setl_id,)
        )
        row = self.store.one("SELECT * FROM settlement WHERE setl_id = ?", cancel_id)
        assert row is not None
        return row

    def query(self, *, psn_no: str, mdtrt_id: str, setl_id: str) -> sqlite3.Row:
        if setl_id:
            row = self.store.one(
                "SELECT * FROM settlement WHERE setl_id = ? AND psn_no = ?", setl_id, psn_no
            )
        else:
            row = self.store.one(
                "SELECT * FROM settlement WHERE mdtrt_id = ? AND psn_no = ? AND record = 'settle'"
                " ORDER BY vali_flag DESC, setl_time DESC, setl_id DESC LIMIT 1",
                mdtrt_id, psn_no,
            )
        if row is None or (mdtrt_id and row["mdtrt_id"] != mdtrt_id):
            raise Reject("未查询到结算信息 (no settlement found)")
        return row

    # -- messages and reversal ---------------------------------------------------------------

    def seen(self, msgid: str) -> sqlite3.Row | None:
        return self.store.one("SELECT * FROM message WHERE msgid = ?", msgid)

    def record(self, msgid: str, infno: str, state: str, setl_id: str = "") -> None:
        self.store.conn.execute(
            "INSERT OR REPLACE INTO message VALUES (?, ?, ?, ?, ?)",
            (msgid, infno, state, setl_id, now_text()),
        )

    def reverse(self, *, psn_no: str, omsgid: str, oinfno: str) -> str:
        """2601: undo the call sent as ``omsgid``; an unknown msgid is barred from now on."""
        msg = self.seen(omsgid)
        if msg is None:
            self.record(omsgid, oinfno, "tombstone")
            return "no such message; msgid barred"
        if msg["infno"] != oinfno:
            raise Reject(f"原交易编号不符 (omsgid was {msg['infno']}, not {oinfno})")
        if msg["state"] in ("tombstone", "reversed", "refused"):
            return f"nothing to reverse ({msg['state']})"
        if oinfno in SETTLE_INFNOS:
            original = self.store.one("SELECT * FROM settlement WHERE setl_id = ?",
                                      msg["setl_id"])
            if original is None or original["psn_no"] != psn_no:
                raise Reject("原交易与人员编号不符 (omsgid belongs to another person)")
            if original["vali_flag"] == "1":
                self._undo(original)
                self.store.conn.execute(
                    "UPDATE settlement SET vali_flag = '0', record = 'reversed'"
                    " WHERE setl_id = ?", (original["setl_id"],),
                )
            self.record(omsgid, oinfno, "reversed", original["setl_id"])
            return f"settlement {original['setl_id']} reversed"
        raise Reject(f"交易 {oinfno} 不支持冲正 (only settlements can be reversed)")

    # -- reconciliation ----------------------------------------------------------------------

    def reconcile(self, *, insutype: str, clr_type: str, setl_optins: str, begn: str, end: str,
                  medfee: Decimal, fund: Decimal, acct: Decimal, count: int) -> dict[str, str]:
        rows = self.store.all(
            "SELECT medfee_sumamt, fund_pay_sumamt, acct_pay FROM settlement"
            " WHERE record = 'settle' AND vali_flag = '1' AND insutype = ? AND clr_type = ?"
            " AND setl_optins = ? AND substr(setl_time, 1, 10) BETWEEN ? AND ?",
            insutype, clr_type, setl_optins, begn, end,
        )
        ours = {
            "medfee_sumamt": sum((Decimal(r["medfee_sumamt"]) for r in rows), ZERO),
            "fund_pay_sumamt": sum((Decimal(r["fund_pay_sumamt"]) for r in rows), ZERO),
            "acct_pay": sum((Decimal(r["acct_pay"]) for r in rows), ZERO),
        }
        theirs = {"medfee_sumamt": medfee, "fund_pay_sumamt": fund, "acct_pay": acct}
        diffs = [f"{k}: hospital {theirs[k]}, platform {ours[k]}"
                 for k in ours if ours[k] != theirs[k]]
        if count != len(rows):
            diffs.append(f"fixmedins_setl_cnt: hospital {count}, platform {len(rows)}")
        return {
            "setl_optins": setl_optins,
            "stmt_rslt": "0" if not diffs else "1",
            "stmt_rslt_dscr": "对账一致 (balanced)" if not diffs else "; ".join(diffs),
        }
