"""Where each Microsoft cloud signs in and serves the Defender API.

Data, not logic: `defender.py` reads these to build its URLs, and nothing
else names a Microsoft host.
"""

from dataclasses import dataclass, field

from django.conf import settings


@dataclass(frozen=True)
class Cloud:
    key: str
    label: str
    login_host: str  # scheme and host of the sign-in authority
    api_base: str  # scheme and host of the Defender API
    scope: str  # client-credentials scope for the token
    regional_api_bases: dict[str, str] = field(hash=False)  # api_region -> API base
    # None leaves msal's own choice for Microsoft hosts. Only the simulator skips
    # instance discovery, which would ask Microsoft to vouch for a host it does not know.
    instance_discovery: bool | None = None

    def authority(self, tenant_id: str) -> str:
        return f"{self.login_host}/{tenant_id}"

    def base_urls(self) -> list[str]:
        """Every scheme and host this cloud's requests may go to."""
        return [self.login_host, self.api_base, *self.regional_api_bases.values()]

    def api_base_for(self, region: str) -> str:
        if not region:
            return self.api_base
        return self.regional_api_bases[region]


COMMERCIAL_REGIONS = {
    "us": "United States",
    "eu": "Europe",
    "uk": "United Kingdom",
    "au": "Australia",
    "swa": "Switzerland",
    "ina": "India",
}

_CLOUDS = {
    "commercial": Cloud(
        key="commercial",
        label="Commercial",
        login_host="https://login.microsoftonline.com",
        api_base="https://api.security.microsoft.com",
        scope="https://api.securitycenter.microsoft.com/.default",
        regional_api_bases={
            region: f"https://{region}.api.security.microsoft.com" for region in COMMERCIAL_REGIONS
        },
    ),
    "gcc": Cloud(
        key="gcc",
        label="US Government (GCC)",
        login_host="https://login.microsoftonline.com",
        api_base="https://api-gcc.securitycenter.microsoft.us",
        scope="https://api-gcc.securitycenter.microsoft.us/.default",
        regional_api_bases={},
    ),
    "gcc_high": Cloud(
        key="gcc_high",
        label="US Government (GCC High)",
        login_host="https://login.microsoftonline.us",
        api_base="https://api-gov.securitycenter.microsoft.us",
        scope="https://api-gov.securitycenter.microsoft.us/.default",
        regional_api_bases={},
    ),
    "dod": Cloud(
        key="dod",
        label="US Government (DoD)",
        login_host="https://login.microsoftonline.us",
        api_base="https://api-gov.securitycenter.microsoft.us",
        scope="https://api-gov.securitycenter.microsoft.us/.default",
        regional_api_bases={},
    ),
}

SIMULATOR = "simulator"

# Every cloud a tenant row may name. The simulator is listed so rows keep a valid
# value when the setting is switched off; `get_cloud` refuses it then.
CLOUD_CHOICES = [(cloud.key, cloud.label) for cloud in _CLOUDS.values()] + [
    (SIMULATOR, "Simulator (local test server)")
]
REGION_CHOICES = [("", "Global (default)")] + [
    (region, f"{label} ({region})") for region, label in COMMERCIAL_REGIONS.items()
]


class UnknownCloud(LookupError):
    """The tenant names a cloud that is not available in this installation."""


def simulator_enabled() -> bool:
    return bool(settings.SCOREBOARD_SIMULATOR_URL)


def available_choices() -> list[tuple[str, str]]:
    return [choice for choice in CLOUD_CHOICES if choice[0] != SIMULATOR or simulator_enabled()]


def get_cloud(key: str) -> Cloud:
    if key == SIMULATOR:
        url = settings.SCOREBOARD_SIMULATOR_URL
        if not url:
            raise UnknownCloud(
                "the simulator cloud is switched off: set SCOREBOARD_SIMULATOR_URL to the "
                "simulator's address, or move the tenant to a Microsoft cloud"
            )
        return Cloud(
            key=SIMULATOR,
            label="Simulator",
            login_host=url,
            api_base=url,
            scope=f"{url}/.default",
            regional_api_bases={},
            instance_discovery=False,
        )
    try:
        return _CLOUDS[key]
    except KeyError:
        raise UnknownCloud(f"unknown cloud {key!r}") from None
