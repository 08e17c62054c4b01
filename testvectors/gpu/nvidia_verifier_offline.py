# Runs NVIDIA's verifier offline on its own Hopper sample: OCSP (network) is replaced by
# "good, no warning", X.509 checks run at 2025-01-01, the test-mode nonce by the one given, and the RIM paths by those given.
import sys, datetime
from OpenSSL import crypto
# Certificate checks at 2025-01-01T00:00:00Z, the `now` of cocoon-attest's tests.
_Store = crypto.X509Store
class _FixedTimeStore(_Store):
    def __init__(self):
        super().__init__()
        self.set_time(datetime.datetime(2025, 1, 1))
crypto.X509Store = _FixedTimeStore
from verifier import cc_admin_utils, cc_admin, config
cc_admin_utils.CcAdminUtils.ocsp_certificate_chain_validation = staticmethod(lambda chain, settings, mode: (True, None, "good", None))
nonce, driver, vbios = sys.argv[1:4]
config.BaseSettings.NONCE = nonce
for cls in [getattr(config, n) for n in dir(config)]:
    if isinstance(cls, type) and hasattr(cls, "DRIVER_RIM_PATH"):
        cls.DRIVER_RIM_PATH = driver
        cls.VBIOS_RIM_PATH = vbios
        cls.TEST_NO_GPU_DRIVER_RIM_PATH = driver
        cls.TEST_NO_GPU_VBIOS_RIM_PATH = vbios
import os
if os.environ.get("SKIP_RIM_SIGNATURE"):
    from verifier import rim
    rim.RIM.verify_signature = lambda self, settings: True
sys.argv = ["cc_admin"] + sys.argv[4:]
cc_admin.main()
