"""Suite-wide settings.

``AQ_STUB_SELFCHECK=1``: every coordinator-stub store (in this process and in
every stub process a test starts, which inherit the environment) checks each
commit and each cached read against a full reload of its files. A change the
journal failed to carry then fails the test that made it.
"""

import os

os.environ["AQ_STUB_SELFCHECK"] = "1"
