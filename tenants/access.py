"""Which tenants a user may see. Every page, chart and export asks here.

Staff see every tenant; other users see the tenants granted to them or to one
of their groups. Anything else is answered with 404, so an outsider cannot
even learn that a slug exists.
"""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404

from tenants.models import Tenant


def visible_tenants(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Tenant]:
    if not user.is_authenticated or not user.is_active:
        return Tenant.objects.none()
    if user.is_staff:
        return Tenant.objects.all()
    granted_to_user = Tenant.viewers.through.objects.filter(tenant=OuterRef("pk"), user=user)
    granted_to_group = Tenant.viewer_groups.through.objects.filter(
        tenant=OuterRef("pk"), group__user=user
    )
    # EXISTS instead of joins: no duplicate rows, no DISTINCT over the whole list.
    return Tenant.objects.filter(Q(Exists(granted_to_user)) | Q(Exists(granted_to_group)))


def get_visible_tenant(user: AbstractBaseUser | AnonymousUser, slug: str) -> Tenant:
    try:
        return visible_tenants(user).get(slug=slug)
    except Tenant.DoesNotExist:
        raise Http404("No such tenant.") from None
