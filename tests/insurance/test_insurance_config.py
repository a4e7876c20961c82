"""The nhsa and soap destinations as they appear in config.toml: parsed by the engine's
loader, errors located, secrets by reference, classification overridable."""

from __future__ import annotations

import pytest

from adapters.nhsa import NhsaDestination
from adapters.nhsa.classify import Classifier, ErrMsgRule
from adapters.soap import SoapDestination
from engine.config import parse_config
from engine.errors import ConfigError

CONFIG = """\
[[channels]]
name = "insurance"
source = { type = "http", listen = "127.0.0.1:0", path = "/insurance" }

[[channels.destinations]]
type = "nhsa"
name = "nhsa"
url = "http://127.0.0.1:9100"
fixmedins_code = "H44030500001"
fixmedins_name = "深圳市示例人民医院"
mdtrtarea_admvs = "440300"
opter = "0001"
opter_name = "收费员甲"
auth = { scheme = "x-tif", paasid = "hosp01", token = "${NHSA_TOKEN}" }
timeouts = { "2207" = 20.0 }
infcodes = { "-2" = "transient" }
err_msg_rules = [{ contains = "限流", verdict = "transient" }]
in_doubt = { ledger = "data/nhsa-ledger.db", delay = 1.0 }

[[channels.destinations]]
type = "soap"
name = "regional"
wsdl = "http://127.0.0.1:9100/regional/asmx?wsdl"
operation = "GetPersonInfo"
code_path = "/output/code"
message_path = "/output/message"
operation_timeouts = { InpatientCalculate = 30.0 }
in_doubt_operations = ["InpatientCalculate"]
"""


def test_both_destinations_parse_and_build():
    config = parse_config(CONFIG)
    nhsa_config, soap_config = config.channels[0].destinations
    nhsa = nhsa_config.build("insurance")
    soap = soap_config.build("insurance")
    assert isinstance(nhsa, NhsaDestination) and isinstance(soap, SoapDestination)
    assert nhsa.name == "insurance/nhsa"
    assert nhsa.client.url == "http://127.0.0.1:9100/fsi/api/rsfComIfsService/callService"
    assert nhsa.client.timeouts == {"2207": 20.0}
    assert nhsa.kind_of("2207") == "settle" and nhsa.kind_of("2208") == "cancel"
    assert nhsa.kind_of("1101") == "plain"
    assert nhsa.client.classifier.verdict("-2", "") == "transient"
    assert nhsa.client.classifier.verdict("-1", "接口限流，请稍后") == "transient"
    assert nhsa.client.classifier.verdict("-1", "参数错误") == "permanent"
    assert type(nhsa.ledger).__name__ == "SqliteLedger"


def test_literal_secret_is_refused_with_its_line():
    text = CONFIG.replace('token = "${NHSA_TOKEN}"', 'token = "plain-text"')
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="config.toml")
    assert "config.toml:14 channels[0].destinations[0].auth" in str(info.value)
    assert "by reference" in str(info.value)


@pytest.mark.parametrize(("old", "new", "where"), [
    ('fixmedins_code = "H44030500001"', 'fixmedins_code = "H4403"', "fixmedins_code"),
    ('mdtrtarea_admvs = "440300"', 'mdtrtarea_admvs = "4403"', "mdtrtarea_admvs"),
    ('url = "http://127.0.0.1:9100"', 'url = "ftp://x"', "url"),
    ('operation = "GetPersonInfo"', 'operation = "GetPersonInfo"\nwsdl_cache = 1',
     "wsdl_cache: unknown key"),
])
def test_bad_values_name_the_key(old, new, where):
    with pytest.raises(ConfigError, match=where):
        parse_config(CONFIG.replace(old, new), file="config.toml")


def test_default_classification():
    classifier = Classifier()
    assert classifier.verdict("0", "") == "success"
    assert classifier.verdict("-1", "签到编号无效或已过期，请重新签到") == "resign"
    assert classifier.verdict("-1", "报文ID重复") == "resend"
    assert classifier.verdict("-1", "人员不存在") == "permanent"
    assert classifier.verdict("99", "") == "permanent"
    custom = Classifier({"-3": "transient"}, [ErrMsgRule(contains="忙", verdict="transient")],
                        default="transient")
    assert custom.verdict("-1", "重新签到") == "permanent"  # given rules replace the defaults
    assert custom.verdict("-1", "系统忙") == "transient"
    assert custom.verdict("-3", "") == "transient"
    assert custom.verdict("7", "") == "transient"  # unknown codes get the default
